"""Every knob of one trial, typed and validated in one place.

The defaults here are the parameters cell of ``notebooks/train.ipynb`` (a test proves it), so a
trial means the same thing whether it comes from YAML, ``--set``, papermill ``-p`` or JupyterLab.
"""

from __future__ import annotations

import difflib
import re
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from imagebench.models.registry import FRAMEWORKS, MODEL_NAMES, model_spec

# the registry is the one list of names: the parameters accept exactly what it defines
Framework = Literal[FRAMEWORKS]  # type: ignore[valid-type]
ModelName = Literal[MODEL_NAMES]  # type: ignore[valid-type]


class ParamsError(ValueError):
    """A parameter problem, worded for the person who wrote the parameter."""


class TrialParams(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    # --- what to train
    experiment: str = Field("default", min_length=1, description="MLflow experiment: the sweep name")
    framework: Framework = Field("keras", description="keras (TensorFlow) or torch (PyTorch/timm)")
    model: ModelName = Field("cnn", description="a name from the model registry (imagebench models lists them)")
    attention: Literal["se", "cbam"] = Field("se", description="block of the *_attention models: se (squeeze-excitation, C/8) or cbam")
    weights: str = Field("none", description="'none', 'imagenet' (the local cache) or a path to a weights file")
    freeze_backbone: bool = Field(False, description="train only the head on a pretrained backbone (features are cached)")
    train_bn: bool = Field(False, description="keep BatchNorm layers trainable when the backbone is frozen")
    pooling: Literal["auto", "avg", "flatten"] = Field("auto", description="auto: flatten for cnn, avg for the backbones")
    head_units: Optional[list[int]] = Field(None, description="hidden Dense sizes; None: the family recipe (cnn [128], backbones [256])")
    dropout: float = Field(0.5, ge=0.0, lt=1.0, description="dropout rate after each hidden Dense layer of the head")
    activation: Literal["relu", "gelu", "swish", "elu", "tanh"] = Field("relu", description="activation of the head's hidden layers")
    # --- data
    dataset: str = Field("digits", description="built-in name ('digits') or a folder of class folders (never modified)")
    image_size: int = Field(64, ge=32, le=1024, description="images are resized to image_size x image_size pixels")
    val_fraction: float = Field(0.15, gt=0.0, lt=1.0, description="share of each class held out for validation (selects and stops)")
    test_fraction: float = Field(0.15, gt=0.0, lt=1.0, description="share of each class held out for the test metrics (never selects)")
    max_per_class: Optional[int] = Field(None, ge=2, description="subsample each class (quick runs)")
    augment: Literal["none", "light", "seed000"] = Field("none", description="training batches only; seed000: rotation ±20°, shift ±30%, shear 0.3, "
                                                        "zoom 0.8-1.2, h-flip, random-resized crop scale (0.6, 1.0)")
    # --- optimisation
    optimizer: Literal["rmsprop", "adam", "adamw", "sgd"] = Field("adam", description="optimizer of the trainable weights")
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0, description="initial learning rate (the schedule changes it)")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="sgd only")
    l2: float = Field(0.0, ge=0.0, le=1.0, description="l2 * sum(w^2) added to the loss, over the kernels of the layers "
                                                      "imagebench builds (CNN convs, attention, head)")
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="decoupled weight decay (adamw only)")
    batch_size: int = Field(32, ge=1, le=4096, description="training images per step")
    epochs: int = Field(10, ge=1, le=10000, description="most epochs to train (early stopping may end sooner)")
    early_stopping_patience: int = Field(5, ge=0, description="0 disables early stopping; the best epoch's weights are restored and tested")
    early_stopping_monitor: Literal["val_loss", "val_accuracy"] = Field("val_loss", description="what early stopping and the best epoch follow")
    lr_schedule: Literal["none", "step", "cosine", "plateau"] = Field("none", description="how the learning rate changes over the epochs")
    lr_decay_factor: float = Field(0.5, gt=0.0, lt=1.0, description="step and plateau schedules")
    lr_step_epochs: int = Field(7, ge=1, description="step schedule: epochs between decays")
    lr_plateau_patience: int = Field(5, ge=1, description="plateau schedule: epochs without improvement before a decay")
    seed: int = Field(42, ge=0, description="seeds the split, the weights' initialisation and the augmentation")
    # --- execution switches for GPUs: off by default (a CPU gains nothing from them, docs/guides/speed.md)
    mixed_precision: bool = Field(False, description="GPU switch: float16 compute, float32 weights (torch autocast + "
                                  "GradScaler; Keras mixed_float16, softmax float32); bfloat16 on a CPU, slower there")
    channels_last: bool = Field(False, description="GPU switch, torch: NHWC memory format for the convolutions (Keras/TF is NHWC already: no effect)")
    compile: bool = Field(False, description="GPU switch: torch.compile of the training step (torch), XLA jit_compile (Keras); costs compile time per trial")

    @field_validator("head_units", mode="before")
    @classmethod
    def _parse_head_units(cls, value: Any) -> Any:
        # papermill -p and --set deliver lists as text: accept "512,256" and "[512, 256]".
        if isinstance(value, str):
            text = value.strip().strip("[]()").strip()
            if text.lower() in ("", "none", "null"):
                return None if text.lower() in ("none", "null") else []
            return [int(part) for part in text.replace(" ", "").split(",") if part]
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        return value

    @field_validator("head_units")
    @classmethod
    def _positive_units(cls, value: Optional[list[int]]) -> Optional[list[int]]:
        if value is not None and any(units < 1 for units in value):
            raise ValueError(f"every entry must be >= 1, got {value}")
        return value

    @field_validator("experiment")
    @classmethod
    def _experiment_names_a_folder(cls, value: str) -> str:
        # results/<experiment>/ is built from it: the one rule of names.py (imported here, not at the
        # top, because names.py builds its error on ParamsError)
        from imagebench.core import names

        if not names.is_safe(value):
            raise ValueError(f"{value!r} cannot be used as a folder name; use {names.NAME_RULE}")
        return value

    @field_validator("weights")
    @classmethod
    def _weights_word(cls, value: str) -> str:
        return value.lower() if value.lower() in ("imagenet", "none") else value

    @model_validator(mode="after")
    def _consistent(self) -> "TrialParams":
        spec = model_spec(self.model)
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                f"val_fraction ({self.val_fraction}) + test_fraction ({self.test_fraction}) leaves "
                "less than 10% for training; lower one of them"
            )
        if spec.backbone is None and self.weights != "none":
            raise ValueError(f"weights={self.weights!r}: model '{self.model}' has no pretrained backbone; use weights: none")
        if spec.backbone is None and self.freeze_backbone:
            raise ValueError(f"freeze_backbone=True: model '{self.model}' has no backbone to freeze")
        if self.weight_decay > 0 and self.optimizer != "adamw":
            raise ValueError(
                f"weight_decay={self.weight_decay} is decoupled decay and applies to adamw only; "
                f"with optimizer '{self.optimizer}' use l2 instead"
            )
        return self

    # --- derived values: one place for each family default
    @property
    def resolved_head_units(self) -> list[int]:
        return list(self.head_units) if self.head_units is not None else list(model_spec(self.model).head_units)

    @property
    def resolved_pooling(self) -> str:
        return self.pooling if self.pooling != "auto" else model_spec(self.model).pooling

    def tracked(self) -> dict[str, Any]:
        """The values logged to MLflow and used in fingerprints: family defaults made explicit."""
        values = self.model_dump()
        values["head_units"] = self.resolved_head_units
        values["pooling"] = self.resolved_pooling
        return values


FIELD_NAMES: tuple[str, ...] = tuple(TrialParams.model_fields)


def closest_field(name: str) -> Optional[str]:
    match = difflib.get_close_matches(name, FIELD_NAMES, n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_key_message(key: str, where: str = "") -> str:
    hint = closest_field(key)
    suggestion = f" (did you mean '{hint}'?)" if hint else ""
    place = f" in {where}" if where else ""
    return f"unknown parameter '{key}'{place}{suggestion}; valid parameters: {', '.join(FIELD_NAMES)}"


def _allowed_values(field: str) -> Optional[str]:
    annotation = TrialParams.model_fields[field].annotation
    args = getattr(annotation, "__args__", None)
    if args and all(isinstance(arg, str) for arg in args):
        return ", ".join(args)
    return None


def _describe(error: dict[str, Any], values: dict[str, Any], where: str) -> str:
    loc = [str(part) for part in error.get("loc", ())]
    key = loc[0] if loc else ""
    place = f" in {where}" if where else ""
    if error["type"] == "extra_forbidden":
        return unknown_key_message(key, where)
    if not key:  # a model-level (cross-field) check
        return f"invalid parameters{place}: {error['msg'].removeprefix('Value error, ')}"
    value = values.get(key, error.get("input"))
    allowed = _allowed_values(key)
    detail = f"allowed values: {allowed}" if allowed else error["msg"].removeprefix("Value error, ")
    return f"parameter '{key}' = {value!r}{place} is invalid: {detail}"


def make_params(values: dict[str, Any] | None = None, where: str = "", **overrides: Any) -> TrialParams:
    """Validate ``values`` (plus overrides) into TrialParams or raise ParamsError naming every problem."""
    merged = {**(values or {}), **overrides}
    try:
        return TrialParams(**merged)
    except ValidationError as exc:
        problems = [_describe(error, merged, where) for error in exc.errors()]
        raise ParamsError("\n".join(problems)) from None


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def coerce_text(value: str) -> Any:
    """Turn a ``--set key=value`` string into the YAML value it spells (3 -> int, true -> bool)."""
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str) and _EXPONENT_NUMBER.fullmatch(parsed):
        return float(parsed)  # YAML 1.1 reads "1e-3" as text
    return parsed


def parse_assignments(assignments: list[str], where: str = "--set") -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for item in assignments or []:
        if "=" not in item:
            raise ParamsError(f"{where} expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in FIELD_NAMES:
            raise ParamsError(unknown_key_message(key, where))
        parsed[key] = coerce_text(value)
    return parsed


NOTEBOOK_OWN_NAMES = ("params", "result")  # variables train.ipynb itself creates after the parameters


def names_before_parameters(namespace: dict[str, Any]) -> set[str]:
    """The notebook's names before its parameters cell, for ``params_from_notebook``.

    A sweep keeps a worker's kernel warm, so an earlier trial's parameters (and ``params``,
    ``result``) may still be defined: they are removed first, so this trial's values come only
    from this trial's cells, never silently from the last one.
    """
    for name in [name for name in namespace if name in FIELD_NAMES or name in NOTEBOOK_OWN_NAMES]:
        del namespace[name]
    return set(namespace)


def params_from_notebook(namespace: dict[str, Any], names_before: set[str]) -> TrialParams:
    """Collect the parameters a notebook defined (its parameters cell plus papermill's injected cell).

    ``names_before`` is the namespace snapshot taken before the parameters cell; every new name must
    be a parameter, so a mistyped ``papermill -p learning_rat 0.1`` is an error here (papermill
    itself only warns).
    """
    new_names = [
        name for name in namespace if name not in names_before and not name.startswith("_") and name not in NOTEBOOK_OWN_NAMES
    ]
    unknown = [name for name in new_names if name not in FIELD_NAMES]
    if unknown:
        raise ParamsError("\n".join(unknown_key_message(name, "the notebook parameters") for name in unknown))
    return make_params({name: namespace[name] for name in new_names}, where="the notebook parameters")


__all__ = [
    "FIELD_NAMES",
    "MODEL_NAMES",
    "ParamsError",
    "TrialParams",
    "make_params",
    "names_before_parameters",
    "params_from_notebook",
    "parse_assignments",
]
