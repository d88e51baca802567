"""Frozen-backbone feature cache: compute a frozen backbone's pooled features once, train only the head.

When the backbone is frozen, its BatchNorm layers are not trained and the training images are not
augmented, the backbone maps each image to the same pooled feature vector in every epoch of every
trial that shares (framework, model, weights, data, split, image size). So the features are
computed once, cached (``.cache/features/``), and the head is trained on them: the same layers,
the same batches, the same dropout draws, so the same predictions as the uncached path within
floating-point tolerance (tested in both frameworks). The product project's setup, 52 head trials
on one frozen EfficientNet-B0, becomes one backbone pass and 52 cheap head fits. On a hit the
backbone is not even built: the head is built alone, seeded apart from the backbone
(``registry.head_seed``), so it starts as it would on top of the backbone; the entry keeps what the
trial reports for the whole model (backbone latency, parameters, FLOPs) and the backbone's weights,
which the trial's kept model (``trained``) shares, so a leader is still published whole.

Not used for ``*_attention`` models (the attention block sits before pooling and is trained) or
when ``$IMAGEBENCH_FEATURE_CACHE=off``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from imagebench.core.contract import ENV_FEATURE_CACHE
from imagebench.data.arrays import Split, TrialData
from imagebench.data.cache import cache_root, cached_arrays
from imagebench.models.registry import model_spec
from imagebench.core.params import TrialParams

FEATURE_VERSION = 3  # 2: meta.json holds the backbone's latency; 3: its params, FLOPs and weights file
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
    # What the trial reports for the whole model without building the backbone on a hit: measured
    # (one image through the backbone) or counted when the features were computed, kept with them.
    backbone_latency_ms: float
    backbone_params: int
    backbone_flops: int
    # The backbone's weights file in the cache entry: a trial keeps its head's weights and this
    # (trained.save). None when caching is off or the entry could not be written.
    backbone_weights: Optional[Path]
    model: Any  # the whole model, built only when the features were computed here; None on a hit

    @property
    def width(self) -> int:
        return int(self.data.train.images.shape[1])


def feature_data(backend, exporter, params: TrialParams, data: TrialData) -> Features:
    """``data`` with each split's images replaced by the frozen backbone's pooled features.

    On a cache hit nothing is built (``Features.model`` is None): the trial trains a head built
    alone (``backend.build_head``) and takes the backbone's latency, parameter and FLOP counts and
    weights from the entry. On a miss the whole model is built, the features computed, and those
    facts measured with them.
    """
    built: dict[str, Any] = {}

    def whole_model():
        if "model" not in built:
            built["model"] = backend.build_model(params, data.num_classes)
        return built["model"]

    def compute():
        model = whole_model()
        arrays = {split: backend.pooled_features(model, getattr(data, split).images) for split in SPLITS}
        head = backend.head_model(model)
        width = int(arrays["train"].shape[1])
        return arrays, {
            "backbone_latency_ms": backend.latency_ms(backend.backbone_model(model), data.test.images[:1]),
            "backbone_params": backend.count_params(model)[0] - backend.count_params(head)[0],
            "backbone_flops": backend.count_flops(model, params) - backend.count_head_flops(head, width),
        }

    root = cache_root("features")
    weights: Optional[Path] = None
    if root is None:
        (arrays, notes), hit = compute(), False
    else:
        entry = root / feature_key(params, data.fingerprint)
        meta = {"version": FEATURE_VERSION, "sizes": [len(getattr(data, split)) for split in SPLITS]}
        backbone = {exporter.BACKBONE_WEIGHTS: lambda path: exporter.save_backbone(whole_model(), path)}
        arrays, notes, hit = cached_arrays(entry, SPLITS, meta, compute, backbone)
        if (entry / exporter.BACKBONE_WEIGHTS).is_file():  # not when the entry could not be written
            weights = entry / exporter.BACKBONE_WEIGHTS
    replaced = {split: Split(images=arrays[split], labels=getattr(data, split).labels) for split in SPLITS}
    return Features(dataclasses.replace(data, **replaced), hit, float(notes["backbone_latency_ms"]),
                    int(notes["backbone_params"]), int(notes["backbone_flops"]), weights, built.get("model"))  # fmt: skip
