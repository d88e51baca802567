"""The Keras/TensorFlow backend: the function contract of ``imagebench.backends``.

Builders live in ``keras_models``, the training loop in ``keras_training``; this module is the
public surface the notebook and CLI call.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from imagebench.backends.keras_models import backbone_model, build_model, head_model  # noqa: E402
from imagebench.backends.keras_training import (  # noqa: E402
    compile_model,
    fit,
    inference_fn,
    make_optimizer,
    pooled_features,
    predict_proba,
)
from imagebench.params import TrialParams  # noqa: E402
from imagebench.resources import requested_threads  # noqa: E402

FRAMEWORK = "keras"
LATENCY_WARMUP = 3
LATENCY_RUNS = 20


def configure(params: TrialParams) -> None:
    """Seed Python, NumPy and TensorFlow from params.seed (Keras draws initialisers and dropout from
    it) and set the dtype policy layers are built with (global in Keras, so set for every trial).

    A sweep's kernel serves several trials in turn: the last trial's models and traced graphs are
    dropped first, so memory stays flat and layer names restart."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(params.seed)
    keras.mixed_precision.set_global_policy(_dtype_policy(params))
    threads = requested_threads()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TF already started its pools in this process; TF_NUM_INTRAOP_THREADS set them


def _dtype_policy(params: TrialParams) -> str:
    if not params.mixed_precision:
        return "float32"
    # float16 is what GPU tensor cores run; CPUs have bfloat16 units at best (same range as float32)
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def count_params(model: keras.Model) -> tuple[int, int]:
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    return int(model.count_params()), trainable


def latency_ms(model: keras.Model, image: np.ndarray) -> float:
    """Median wall time in ms of one forward pass on a (1, S, S, 3) batch, after warm-up calls."""
    x = tf.convert_to_tensor(image, tf.float32)
    forward = inference_fn(model)  # the traced graph, as predictions are made
    for _ in range(LATENCY_WARMUP):
        forward(x).numpy()
    timings = []
    for _ in range(LATENCY_RUNS):
        start = time.perf_counter()
        forward(x).numpy()  # .numpy() waits for the result, so the timing is complete
        timings.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(timings))


def preprocess_output(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """What the body/backbone receives: the output of the model's ``preprocess`` layer."""
    probe = keras.Model(model.inputs, model.get_layer("preprocess").output)
    return np.asarray(probe(tf.convert_to_tensor(images, tf.float32), training=False))


__all__ = [
    "FRAMEWORK",
    "backbone_model",
    "build_model",
    "compile_model",
    "configure",
    "count_params",
    "fit",
    "head_model",
    "latency_ms",
    "make_optimizer",
    "pooled_features",
    "predict_proba",
    "preprocess_output",
]
