"""Framework backends, imported lazily so the CLI, grid and leaderboard never load TF or torch.

What a trial asks of a framework is the ``Backend`` protocol below (``keras_backend`` and
``torch_backend`` provide it, as modules); what publishing a leader (``imagebench.report.publish``)
and keeping a trial's model (``imagebench.trial.trained``) ask is the ``Exporter`` protocol
(``keras_export``, ``torch_export``). ``get_backend`` / ``get_exporter`` import the one module a
framework names; tests/backends/keras and tests/backends/torch check that each module provides
every member with a compatible signature.

Models are the framework's own objects (``keras.Model``, ``torch.nn.Module``): images go in as
uint8 RGB pixels (N, H, W, 3) and out as probabilities through ``predict_proba`` (Keras models
return probabilities, torch models logits: never call a model directly).
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Optional, Protocol, cast

from imagebench.models.registry import FRAMEWORKS

if TYPE_CHECKING:  # annotations only: importing this package loads neither a framework nor the data code
    from pathlib import Path

    import numpy as np

    from imagebench.core.params import TrialParams
    from imagebench.data.arrays import TrialData
    from imagebench.training.monitor import EpochMonitor

Model = Any  # the framework's model: keras.Model or torch.nn.Module


class Backend(Protocol):
    """One framework's training side (``get_backend``): build, train, predict and measure a model."""

    def configure(self, params: TrialParams) -> None:
        """Seed every RNG and set thread counts (``$IMAGEBENCH_THREADS`` from a parallel sweep); called first."""

    def build_model(self, params: TrialParams, num_classes: int) -> Model:
        """The registry's model, preprocessing included, so it takes uint8 RGB pixels (N, H, W, 3)."""

    def build_head(self, params: TrialParams, num_classes: int, feature_dim: int) -> Model:
        """The layers after pooling alone, fed pooled features (a feature-cache hit builds no backbone)."""

    def head_model(self, model: Model) -> Model:
        """The layers after pooling of ``model`` as a model of their own, sharing its weights."""

    def backbone_model(self, model: Model) -> Model:
        """Pixels -> pooled features: the layers of ``model`` up to pooling, sharing its weights."""

    def pooled_features(self, model: Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, D) pooled features of ``images`` through ``model``'s frozen backbone."""

    def fit(self, model: Model, params: TrialParams, data: TrialData, monitor: EpochMonitor,
            epoch_budget: Optional[int] = None, resume: Optional[dict[str, Any]] = None) -> dict[str, Any]:  # fmt: skip
        """Train on ``data.train`` (augmented per the preset), evaluate ``data.val`` each epoch (never
        augmented), report each epoch to ``monitor`` and end holding its best epoch's weights;
        ``epoch_budget`` stops early (a halving rung), ``resume`` is a state an earlier ``fit``
        returned (continue, not restart). Returns the state to continue from."""

    def predict_proba(self, model: Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, K) float class probabilities of uint8 ``images``."""

    def count_params(self, model: Model) -> tuple[int, int]:
        """(total, trainable) parameter counts."""

    def count_flops(self, model: Model, params: TrialParams) -> int:
        """Forward FLOPs for one image at ``params.image_size``, a multiply-add = 2, convolutions and
        matrix products only (torch's ``FlopCounterMode`` rule, so both frameworks count the same)."""

    def count_head_flops(self, head: Model, feature_dim: int) -> int:
        """``count_flops`` of a head fed one pooled feature vector of width ``feature_dim``."""

    def latency_ms(self, model: Model, image: np.ndarray) -> float:
        """Median milliseconds for one batch of ``image`` (one image) after warm-up."""


class Exporter(Protocol):
    """One framework's side of keeping and publishing a trained model (``get_exporter``)."""

    HEAD_WEIGHTS: str  # the head's weights file in a kept folder (a frozen backbone's trial)
    BACKBONE_WEIGHTS: str  # the backbone's weights file, in a feature-cache entry and a kept folder

    def save_trained(self, model: Model, folder: Path) -> None:
        """Keep the whole model's weights in ``folder``."""

    def save_head(self, head: Model, folder: Path) -> None:
        """Keep a head's weights in ``folder`` (its backbone's are kept beside them as ``BACKBONE_WEIGHTS``)."""

    def save_backbone(self, model: Model, path: Path) -> None:
        """Write the weights of ``model``'s layers up to pooling to ``path``."""

    def load_trained(self, params: dict, num_classes: int, folder: Path) -> Model:
        """The kept model rebuilt from a kept folder (whole, or head + backbone) under the trial's seed and dtype."""

    def export_files(self, model: Model, example: np.ndarray, folder: Path) -> dict[str, Path]:
        """Write ONNX (key ``onnx``) and the framework's own file into ``folder``; their paths by kind."""

    def predictor(self, model: Model) -> Callable[[np.ndarray], np.ndarray]:
        """pixels -> probabilities through the restored model (a check of the exports)."""

    def native_predictor(self, path: Path) -> Callable[[np.ndarray], np.ndarray]:
        """pixels -> probabilities through the framework's own exported file, loaded again."""

    def log_mlflow_model(self, model: Model, run_id: str, signature, example: np.ndarray) -> str:
        """Log the model in the framework's MLflow flavour into run ``run_id``; returns its model URI."""


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


def _module(modules: dict[str, str], framework: str) -> Any:
    try:
        module_name = modules[framework]
    except KeyError:
        raise ValueError(f"unknown framework '{framework}'; known: {', '.join(modules)}") from None
    return importlib.import_module(module_name)


def get_backend(framework: str) -> Backend:
    """The framework's backend module (``keras_backend``, ``torch_backend``), imported now."""
    return cast(Backend, _module(_MODULES, framework))


def get_exporter(framework: str) -> Exporter:
    """The framework's exporter module (``keras_export``, ``torch_export``), imported now."""
    return cast(Exporter, _module(_EXPORTERS, framework))
