"""PyTorch/timm backend: the functions listed in ``imagebench.backends`` (same contract as Keras).

Models are built in ``torch_models`` and trained in ``torch_training``; this module is the
public surface. Never import TensorFlow/Keras here: TF and timm in one process crash.
"""

from __future__ import annotations

import random
import statistics
import time

import numpy as np
import torch
from torch import nn

from imagebench.backends import architecture_key, freeze_long_lived_objects
from imagebench.backends.torch_models import (
    ImageClassifier,
    backbone_model,
    build_head,
    build_model,
    head_model,
    l2_penalty,
    regularized_weights,
)
from imagebench.backends.torch_training import (
    augment_batch,
    device_for,
    fit,
    make_optimizer,
    pooled_features,
    predict_proba,
    warp,
)
from imagebench.core.params import TrialParams
from imagebench.training.resources import requested_threads

__all__ = [
    "ImageClassifier",
    "augment_batch",
    "backbone_model",
    "build_head",
    "build_model",
    "configure",
    "count_flops",
    "count_head_flops",
    "count_params",
    "device_for",
    "fit",
    "head_model",
    "pooled_features",
    "l2_penalty",
    "latency_ms",
    "make_optimizer",
    "predict_proba",
    "preprocess_output",
    "regularized_weights",
    "warp",
]


def configure(params: TrialParams) -> None:
    """Seed every RNG a trial touches (torch.manual_seed also seeds CUDA)."""
    freeze_long_lived_objects()
    random.seed(params.seed)
    np.random.seed(params.seed)
    torch.manual_seed(params.seed)
    threads = requested_threads()
    if threads:
        torch.set_num_threads(threads)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters. BatchNorm running statistics are buffers, not counted
    (Keras counts them as non-trainable weights, so its totals are ~0.3-1% higher for the backbones)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return int(total), int(trainable)


def count_flops(model: nn.Module, params: TrialParams) -> int:
    """Forward floating-point operations for one image at ``params.image_size``, as torch's
    ``FlopCounterMode`` counts them: convolutions and matrix products, a multiply-add = 2 FLOPs
    (timm's tables list multiply-adds, half of this); elementwise work (preprocessing, BatchNorm,
    activations, pooling) is not counted. The Keras backend counts the same operations.

    Eval mode and batch 1 on the model's device; the model's own preprocessing (inside it) runs
    too but adds nothing. The counted forward costs 2-3 plain ones (EfficientNet-B0 at 32 px:
    40-140 ms here, over 0.4 s on a busy CPU), so the count is kept per architecture in the process.
    """
    key = architecture_key(params, model.classifier.out_features)
    if key not in _FLOPS_BY_ARCHITECTURE:
        _FLOPS_BY_ARCHITECTURE[key] = _counted_forward(model, (params.image_size, params.image_size, 3), torch.uint8)
    return _FLOPS_BY_ARCHITECTURE[key]


def count_head_flops(head: nn.Module, feature_dim: int) -> int:
    """Forward FLOPs of a head (``head_model``/``build_head``) for one pooled feature vector, counted
    as ``count_flops`` counts: the whole model's count is the backbone's plus this."""
    return _counted_forward(head, (feature_dim,), torch.float32)


_FLOPS_BY_ARCHITECTURE: dict[tuple, int] = {}


def _counted_forward(model: nn.Module, example_shape: tuple[int, ...], dtype: torch.dtype) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    example = torch.zeros(1, *example_shape, dtype=dtype, device=next(model.parameters()).device)
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(example)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # CUDA calls are asynchronous; time the finished work


def latency_ms(model: nn.Module, image: np.ndarray) -> float:
    """Median milliseconds for one (1, S, S, 3) uint8 image, after 3 warm-up calls (20 timed)."""
    model.eval()
    device = next(model.parameters()).device
    batch = torch.as_tensor(image, device=device)
    timings = []
    with torch.inference_mode():
        for call in range(3 + 20):
            _sync(device)
            started = time.perf_counter()
            model(batch)
            _sync(device)
            if call >= 3:
                timings.append((time.perf_counter() - started) * 1000.0)
    return float(statistics.median(timings))


def preprocess_output(model: ImageClassifier, images: np.ndarray) -> np.ndarray:
    """What the CNN body / timm backbone receives: NCHW float after the entry's preprocessing."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        return model.preprocess(torch.as_tensor(images, device=device)).cpu().numpy()

