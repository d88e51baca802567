"""The Keras/TensorFlow backend: the function contract of ``imagebench.backends``.

Builders live in ``keras_models``, the training loop in ``keras_training``; this module is the
public surface the notebook and CLI call.
"""

from __future__ import annotations

from imagebench.backends import load_tensorflow  # noqa: E402

load_tensorflow()  # before keras: its environment, and TensorFlow's start-up chatter kept out of outputs

import time  # noqa: E402
import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from imagebench.backends import architecture_key, freeze_long_lived_objects  # noqa: E402
from imagebench.backends.keras_models import backbone_model, build_model, head_model  # noqa: E402
from imagebench.backends.keras_training import (  # noqa: E402
    build_head,
    compile_model,
    fit,
    inference_fn,
    make_optimizer,
    pooled_features,
    predict_proba,
)
from imagebench.core.params import TrialParams  # noqa: E402
from imagebench.training.resources import requested_threads  # noqa: E402

FRAMEWORK = "keras"
LATENCY_WARMUP = 3
LATENCY_RUNS = 20


def configure(params: TrialParams) -> None:
    """Seed Python, NumPy and TensorFlow from params.seed (Keras draws initialisers and dropout from
    it) and set the dtype policy layers are built with (global in Keras, so set for every trial).

    A sweep's kernel serves several trials in turn: the last trial's models and traced graphs are
    dropped first, so memory stays flat and layer names restart."""
    freeze_long_lived_objects()
    keras.backend.clear_session()
    _forget_custom_gradients()
    keras.utils.set_random_seed(params.seed)
    keras.mixed_precision.set_global_policy(_dtype_policy(params))
    threads = requested_threads()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass  # TF already started its pools in this process; TF_NUM_INTRAOP_THREADS set them


def _forget_custom_gradients() -> None:
    """Let the last trial's training graph go (a kept kernel grew 250-350 MB per EfficientNet-B0
    trial; benchmarks/keras_graph_leak.py).

    Tracing a ``tf.custom_gradient`` function (TensorFlow's swish/SiLU in EfficientNet, the
    optimizer's cross-replica gradient sum) registers its gradient in TensorFlow's process-wide
    registry under a fresh ``CustomGradient-N`` name, never removed: each entry keeps its whole graph
    alive. An entry is only read while its graph's gradients are being traced, so between trials,
    with the last trial's models gone, every one of them can go (a new trace registers its own).
    """
    from tensorflow.python.framework import ops

    registry = ops._gradient_registry._registry
    for name in [name for name in registry if name.startswith("CustomGradient-")]:
        del registry[name]


def _dtype_policy(params: TrialParams) -> str:
    if not params.mixed_precision:
        return "float32"
    # float16 is what GPU tensor cores run; CPUs have bfloat16 units at best (same range as float32)
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def count_params(model: keras.Model) -> tuple[int, int]:
    trainable = sum(int(np.prod(weight.shape)) for weight in model.trainable_weights)
    return int(model.count_params()), trainable


# Forward FLOPs are counted on the traced inference graph, op by op, with the rule of torch's
# FlopCounterMode (the torch backend's counter): Conv2D and DepthwiseConv2dNative = 2 x output
# elements x multiply-adds per output (kernel height x width x input channels per group), MatMul and
# BatchMatMul = 2 x M x N x K; nothing else (BiasAdd, BatchNorm, activations, pooling, preprocessing).
# Why not TensorFlow's profiler (tf.compat.v1.profiler with float_operation() on a frozen graph): it
# also counts elementwise ops that torch's counter leaves out (EfficientNet-B0 at 32 px: 18.36M
# against 17.58M, +4.4%, so the frameworks would disagree by definition), it needs fully known
# shapes, so a fresh batch-1 trace plus freezing (2.8 s for EfficientNet-B0, 5.0 s for ResNet50 here),
# and it is a TF1 API. Why not a sum over the built layers: the SE/CBAM blocks call Dense layers
# inside their own call (CBAM's MLP twice), invisible to a layer walk. The graph walk sees exactly
# what runs, and reuses the graph the trial already traced for predictions and latency
# (``inference_fn``: its batch dimension may be None = one image), so it costs a few ms in a trial.
COUNTED_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
# The count depends only on the architecture; a model whose inference graph is not traced yet (the
# feature-cache path predicts with the head alone) costs one trace (~1-1.5 s for EfficientNet-B0), paid
# once per architecture in a kernel.
_FLOPS_BY_ARCHITECTURE: dict[tuple, int] = {}


def count_flops(model: keras.Model, params: TrialParams) -> int:
    """Forward floating-point operations for one image at ``params.image_size`` (a multiply-add = 2),
    counted as torch's FlopCounterMode counts them (see COUNTED_OPS above)."""
    key = architecture_key(params, int(model.outputs[0].shape[-1]))
    if key not in _FLOPS_BY_ARCHITECTURE:
        spec = tf.TensorSpec((1, params.image_size, params.image_size, 3), tf.float32)
        # an existing trace with a None batch serves a batch of 1: no new trace after predictions
        _FLOPS_BY_ARCHITECTURE[key] = _graph_flops(inference_fn(model).get_concrete_function(spec).graph)
    return _FLOPS_BY_ARCHITECTURE[key]


def count_head_flops(head: keras.Model, feature_dim: int) -> int:
    """Forward FLOPs of a head (``head_model``/``build_head``) for one pooled feature vector, counted
    as ``count_flops`` counts: the whole model's count is the backbone's plus this."""
    spec = tf.TensorSpec((1, feature_dim), tf.float32)
    return _graph_flops(inference_fn(head).get_concrete_function(spec).graph)


def _per_image_shape(tensor) -> list[int]:
    dims = tensor.shape.as_list()
    if dims and dims[0] is None:
        dims[0] = 1  # the traced batch dimension: one image
    if any(dim is None for dim in dims):
        raise ValueError(f"{tensor.name}: shape {tensor.shape} not known at one image")
    return dims


def _op_flops(op) -> int:
    out = _per_image_shape(op.outputs[0])
    if op.type == "Conv2D":  # filter (kh, kw, in / groups, out)
        kh, kw, per_group, _ = _per_image_shape(op.inputs[1])
        return 2 * int(np.prod(out)) * kh * kw * per_group
    if op.type == "DepthwiseConv2dNative":  # one kh x kw filter per output channel
        kh, kw, _, _ = _per_image_shape(op.inputs[1])
        return 2 * int(np.prod(out)) * kh * kw
    a = _per_image_shape(op.inputs[0])
    transposed = op.get_attr("transpose_a" if op.type == "MatMul" else "adj_x")
    return 2 * int(np.prod(out)) * (a[-2] if transposed else a[-1])


def _graph_flops(graph) -> int:
    total = 0
    for op in graph.get_operations():
        if op.type in COUNTED_OPS:
            total += _op_flops(op)
        elif op.type in ("PartitionedCall", "StatefulPartitionedCall"):
            # Keras layers are inlined when a model is traced; a layer that is a tf.function of its
            # own appears as a call: count its body (a private TF API, hence the guard)
            try:
                total += _graph_flops(graph._get_function(op.get_attr("f").name).graph)
            except (AttributeError, ValueError) as exc:
                warnings.warn(f"FLOPs of nested function {op.name} not counted: {exc}", stacklevel=2)
    return total


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
    "build_head",
    "build_model",
    "compile_model",
    "configure",
    "count_flops",
    "count_head_flops",
    "count_params",
    "fit",
    "head_model",
    "latency_ms",
    "make_optimizer",
    "pooled_features",
    "predict_proba",
    "preprocess_output",
]
