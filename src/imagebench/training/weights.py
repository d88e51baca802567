"""Are the pretrained weights a sweep asks for on this machine? Checked before the first trial.

Nothing can be downloaded at run time, so ``weights: imagenet`` must find the file in the
framework's own cache, and a weights path must exist. The check looks at files only: it imports
neither TensorFlow nor torch.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Optional

from imagebench.models.registry import Backbone, model_spec
from imagebench.core.params import TrialParams

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"


def _hf_snapshot_has_weights(hub_id: str) -> bool:
    snapshots = hf_cache_dir() / f"models--{hub_id.replace('/', '--')}" / "snapshots"
    return snapshots.is_dir() and any((snap / name).is_file() for snap in snapshots.iterdir() for name in HF_WEIGHT_FILES)


def _expected_location(framework: str, backbone: Backbone) -> Path:
    if framework == "keras":
        return keras_cache_dir() / backbone.keras_notop_file
    return hf_cache_dir() / f"models--{backbone.timm_hub_id.replace('/', '--')}"


def _imagenet_available(framework: str, backbone: Backbone) -> bool:
    if framework == "keras":
        return (keras_cache_dir() / backbone.keras_notop_file).is_file()
    return _hf_snapshot_has_weights(backbone.timm_hub_id)


def missing_weights(params: TrialParams) -> Optional[str]:
    """A sentence saying what is missing and where it was looked for, or None when all is there."""
    backbone = model_spec(params.model).backbone
    if backbone is None or params.weights == "none":
        return None
    if params.weights != "imagenet":
        path = Path(params.weights).expanduser()
        return None if path.is_file() else f"{params.framework}/{params.model}: weights file '{params.weights}' does not exist"
    if _imagenet_available(params.framework, backbone):
        return None
    return (
        f"{params.framework}/{params.model}: no ImageNet weights for '{backbone.name}' in "
        f"{_expected_location(params.framework, backbone)}"
    )


def check_weights(trials: Iterable[TrialParams]) -> list[str]:
    """Every distinct missing-weights problem among ``trials`` (empty when all can load offline)."""
    problems = {problem for params in trials if (problem := missing_weights(params))}
    return sorted(problems)


class WeightsError(FileNotFoundError):
    pass


def wrong_weights_file(path: str, framework: str, model: str, error: BaseException) -> WeightsError:
    """The error for a weights file that exists but does not fit the backbone being built."""
    detail = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return WeightsError(
        f"weights file '{path}' does not fit {framework}/{model}: {detail}. Give a file saved from the same "
        f"backbone in {framework} ({'a Keras applications .h5/.weights.h5 without top' if framework == 'keras' else 'a timm state dict, .pth/.safetensors'}), "
        "or use weights: imagenet / none"
    )  # fmt: skip


def require_weights(trials: Iterable[TrialParams]) -> None:
    problems = check_weights(trials)
    if problems:
        raise WeightsError("pretrained weights missing:\n  " + "\n  ".join(problems) + "\n" + HOW_TO_SUPPLY)


HOW_TO_SUPPLY = (
    "Weights cannot be downloaded here. Copy the Keras file into ~/.keras/models/ (or $KERAS_HOME/models), "
    "put the timm model into the Hugging Face cache (~/.cache/huggingface/hub), or set weights: to a "
    "local weights file; weights: none trains from scratch."
)
