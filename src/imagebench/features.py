"""Frozen-backbone feature cache: compute a frozen backbone's pooled features once, train only the head.

When the backbone is frozen, its BatchNorm layers are not trained and the training images are not
augmented, the backbone maps each image to the same pooled feature vector in every epoch of every
trial that shares (framework, model, weights, data, split, image size). So the features are
computed once, cached (``.cache/features/``), and the head is trained on them: the same layers,
the same batches, the same dropout draws, so the same predictions as the uncached path within
floating-point tolerance (tested in both frameworks). The product project's setup, 52 head trials
on one frozen EfficientNet-B0, becomes one backbone pass and 52 cheap head fits.

Not used for ``*_attention`` models (the attention block sits before pooling and is trained) or
when ``$IMAGEBENCH_FEATURE_CACHE=off``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from imagebench.data.arrays import Split, TrialData
from imagebench.data.cache import cache_root, cached_arrays
from imagebench.models.registry import model_spec
from imagebench.params import TrialParams

ENV_FEATURE_CACHE = "IMAGEBENCH_FEATURE_CACHE"
FEATURE_VERSION = 2  # 2: meta.json holds the backbone's latency
SPLITS = ("train", "val", "test")
# what the pooled features depend on, besides the data's fingerprint
FEATURE_IDENTITY = ("framework", "model", "weights", "image_size", "pooling", "dataset", "val_fraction",
                    "test_fraction", "max_per_class", "seed")  # fmt: skip


def applies(params: TrialParams) -> bool:
    spec = model_spec(params.model)
    enabled = os.environ.get(ENV_FEATURE_CACHE, "").strip().lower() != "off"
    return (
        enabled and spec.backbone is not None and not spec.attention and params.freeze_backbone
        and not params.train_bn and params.augment == "none"
    )  # fmt: skip


def _weights_identity(weights: str) -> str:
    path = Path(weights).expanduser()
    if weights in ("none", "imagenet") or not path.is_file():
        return weights
    stat = path.stat()
    return f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"


def feature_key(params: TrialParams, data_fingerprint: str) -> str:
    # The seed stays in the key: it chooses the split, and with weights "none" the random backbone.
    values = {name: params.tracked()[name] for name in FEATURE_IDENTITY}
    values["weights"] = _weights_identity(params.weights)
    payload = json.dumps({"v": FEATURE_VERSION, "params": values, "data": data_fingerprint}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


@dataclasses.dataclass(frozen=True)
class Features:
    data: TrialData  # each split's images replaced by pooled features (N, D)
    hit: bool  # whether they came from the cache
    backbone_latency_ms: float  # one image through the backbone, measured when the features were computed


def feature_data(backend, model, params: TrialParams, data: TrialData) -> Features:
    """``data`` with each split's images replaced by the model's pooled backbone features.

    The backbone's latency is measured once with the features and kept with them: a cached
    trial then times only its own head, instead of running the whole frozen network again.
    """

    def compute():
        arrays = {split: backend.pooled_features(model, getattr(data, split).images) for split in SPLITS}
        latency = backend.latency_ms(backend.backbone_model(model), data.test.images[:1])
        return arrays, {"backbone_latency_ms": latency}

    root = cache_root("features")
    if root is None:
        (arrays, notes), hit = compute(), False
    else:
        meta = {"version": FEATURE_VERSION, "sizes": [len(getattr(data, split)) for split in SPLITS]}
        arrays, notes, hit = cached_arrays(root / feature_key(params, data.fingerprint), SPLITS, meta, compute)
    replaced = {split: Split(images=arrays[split], labels=getattr(data, split).labels) for split in SPLITS}
    return Features(dataclasses.replace(data, **replaced), hit, float(notes["backbone_latency_ms"]))
