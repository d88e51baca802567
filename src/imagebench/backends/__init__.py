"""Framework backends, imported lazily so the CLI, grid and leaderboard never load TF or torch.

Each backend module provides the same functions (see ``keras_backend`` and ``torch_backend``):

- ``configure(params)``: seed every RNG and set thread counts (``$IMAGEBENCH_THREADS``, set by a
  parallel sweep so workers share the cores); called before anything else.
- ``build_model(params, num_classes) -> model``: from the registry, preprocessing included, so
  the model takes uint8 RGB pixels (N, H, W, 3) (Keras returns probabilities, torch logits:
  always go through ``predict_proba``).
- ``fit(model, params, data, monitor, epoch_budget=None, resume=None) -> state``: train on
  ``data.train`` (augmented per the preset), evaluate ``data.val`` each epoch (never augmented),
  report each epoch to ``monitor`` and leave the model holding the weights of ``monitor``'s best
  epoch. ``epoch_budget`` stops early (a halving rung); ``resume`` is a state an earlier ``fit``
  returned (last weights, best weights, optimizer), so training continues instead of restarting.
- ``predict_proba(model, images, batch_size) -> (N, K) float probabilities``.
- ``count_params(model) -> (total, trainable)``.
- ``count_flops(model, params) -> int``: forward FLOPs for one image at ``params.image_size``, a
  multiply-add = 2, convolutions and matrix products only (torch's ``FlopCounterMode`` rule; the
  Keras backend applies it to the traced graph), so both frameworks count the same.
- ``latency_ms(model, image) -> median ms for one image (batch of 1) after warm-up``.

Publishing a leader (``imagebench.report.publish``) uses a second module per framework, ``get_exporter``
(``keras_export``, ``torch_export``): ``save_trained`` / ``load_trained`` (the kept weights),
``export_files`` (ONNX and the framework's own file), ``predictor`` / ``native_predictor`` (checks)
and ``log_mlflow_model`` (the framework's MLflow flavour).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from contextlib import contextmanager
from types import ModuleType

from imagebench.models.registry import FRAMEWORKS


@contextmanager
def _native_stderr_silenced():
    """File descriptor 2 to /dev/null: TensorFlow's C++ start-up lines (oneDNN, CPU features, absl's
    pre-init notice) bypass Python's logging and TF_CPP_MIN_LOG_LEVEL, and would fill every Keras
    trial's notebook and log. Python exceptions still propagate."""
    sys.stderr.flush()
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def load_tensorflow() -> None:
    """Import TensorFlow once, quietly, with Keras on its TensorFlow backend (the keras_* modules call
    this before importing keras; everything TensorFlow prints after its start-up still shows)."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    with _native_stderr_silenced():
        import tensorflow  # noqa: F401


def freeze_long_lived_objects() -> None:
    """Once per process, from each backend's ``configure``: collect, then move every object alive now
    (the framework's, MLflow's and matplotlib's modules: ~0.8 million objects with torch) out of the
    garbage collector's sight (``gc.freeze``).

    Each full collection walked them all: 0.2-0.6 s, every few trials of a sweep's kernel (Keras'
    ``clear_session`` runs one at every trial's start), against ~1 s for a head on cached features.
    The frozen objects live as long as the process anyway; everything a trial creates is still collected.
    """
    global _FROZEN
    if not _FROZEN:
        gc.collect()
        gc.freeze()
        _FROZEN = True


_FROZEN = False


_MODULES = {framework: f"imagebench.backends.{framework}_backend" for framework in FRAMEWORKS}  # keras_backend, torch_backend
_EXPORTERS = {framework: f"imagebench.backends.{framework}_export" for framework in FRAMEWORKS}


def architecture_key(params, num_classes: int) -> tuple:
    """What a model's FLOPs depend on (not weights, dtype, freezing or training settings): backends
    keep ``count_flops`` results per key, so a sweep's warm kernel counts each architecture once."""
    return (params.model, params.image_size, num_classes, tuple(params.resolved_head_units), params.resolved_pooling,
            params.attention)  # fmt: skip


def _module(modules: dict[str, str], framework: str) -> ModuleType:
    try:
        module_name = modules[framework]
    except KeyError:
        raise ValueError(f"unknown framework '{framework}'; known: {', '.join(modules)}") from None
    return importlib.import_module(module_name)


def get_backend(framework: str) -> ModuleType:
    return _module(_MODULES, framework)


def get_exporter(framework: str) -> ModuleType:
    return _module(_EXPORTERS, framework)
