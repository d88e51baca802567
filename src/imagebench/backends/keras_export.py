"""Keras side of publishing a leader (see ``imagebench.report.publish``): keep, restore, export, log.

Every export takes what the trial took, 0-255 RGB pixels (N, S, S, 3) as float32, with the
model's own preprocessing inside, and returns class probabilities.
"""

from __future__ import annotations

from imagebench.backends import load_tensorflow  # noqa: E402

load_tensorflow()

import contextlib  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import types  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402

from imagebench import store  # noqa: E402
from imagebench.backends.keras_backend import configure  # noqa: E402
from imagebench.backends.keras_models import backbone_model, build_model, head_model  # noqa: E402  (also registers the custom layers)
from imagebench.backends.keras_training import predict_proba  # noqa: E402
from imagebench.core.params import make_params  # noqa: E402

WEIGHTS = "model.weights.h5"
# A frozen-backbone trial on cached features keeps its head and the backbone's (shared) weights instead
HEAD_WEIGHTS = "head.weights.h5"
BACKBONE_WEIGHTS = "backbone.weights.h5"
NATIVE = "model.keras"
ONNX = "model.onnx"
REQUIREMENTS = ("keras", "tensorflow-cpu", "tensorflow", "numpy")


def save_trained(model: keras.Model, folder: Path) -> None:
    model.save_weights(Path(folder) / WEIGHTS)


def save_head(head: keras.Model, folder: Path) -> None:
    head.save_weights(Path(folder) / HEAD_WEIGHTS)


def save_backbone(model: keras.Model, path: Path) -> None:
    """The whole model's layers up to pooling (preprocessing included); Keras wants the suffix."""
    backbone_model(model).save_weights(path)


def load_trained(params: dict, num_classes: int, folder: Path) -> keras.Model:
    """The trial's model with its kept weights (whole, or head + backbone), under the trial's seed
    and dtype policy; built without pretrained weights (they are overwritten)."""
    trial_params = make_params({**params, "weights": "none"})
    configure(trial_params)
    model = build_model(trial_params, num_classes)
    folder = Path(folder)
    if (folder / HEAD_WEIGHTS).is_file():
        backbone_model(model).load_weights(folder / BACKBONE_WEIGHTS)
        head_model(model).load_weights(folder / HEAD_WEIGHTS)
    else:
        model.load_weights(folder / WEIGHTS)
    _freeze_normalization_statistics(model)
    return model


def _freeze_normalization_statistics(model: keras.Model) -> None:
    """A Normalization layer (EfficientNet's preprocessing) keeps its mean and variance as eager
    tensors, which tf2onnx turns into extra graph *inputs* the ONNX file cannot run without; as
    NumPy constants they are baked into every traced graph."""
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Normalization) and layer.mean is not None:
            layer.mean = keras.ops.convert_to_numpy(layer.mean)
            layer.variance = keras.ops.convert_to_numpy(layer.variance)


def export_files(model: keras.Model, example: np.ndarray, folder: Path) -> dict[str, Path]:
    """``model.keras`` (Keras' own format; loading it needs imagebench's custom layers) and ``model.onnx`` (tf2onnx)."""
    # export refuses a model never called; a re-export logs no MLflow model, the call that used to come first
    model(example[:1], training=False)
    model.save(Path(folder) / NATIVE)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints the whole traced signature
        model.export(str(Path(folder) / ONNX), format="onnx", verbose=False)
    return {"keras": Path(folder) / NATIVE, "onnx": Path(folder) / ONNX}


def native_predictor(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    return predictor(keras.saving.load_model(path))


def predictor(model: keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    return lambda pixels: predict_proba(model, pixels, 256)


def _save_model_into_fresh_folder(path, **kwargs):
    # MLflow 3.17's keras flavour writes the input example before it creates the model folder
    # (FileNotFoundError): create it first, then save as usual.
    import mlflow.keras

    os.makedirs(path, exist_ok=True)
    return mlflow.keras.save_model(path=path, **kwargs)


def log_mlflow_model(model: keras.Model, run_id: str, signature, example: np.ndarray) -> str:
    """The Keras flavour, saved as a TensorFlow SavedModel export (loads without imagebench's layers)."""
    from mlflow.models import Model

    flavour = types.SimpleNamespace(__name__="mlflow.keras", save_model=_save_model_into_fresh_folder)
    requirements = store.pinned_requirements(list(REQUIREMENTS))
    with contextlib.redirect_stdout(io.StringIO()):  # model.export prints the traced signature
        info = Model.log(artifact_path=None, name=store.LOGGED_MODEL_NAME, flavor=flavour, flavor_name="mlflow.keras",
                         run_id=run_id, model=model, signature=signature, input_example=example,
                         pip_requirements=requirements, save_exported_model=True)  # fmt: skip
    return info.model_uri
