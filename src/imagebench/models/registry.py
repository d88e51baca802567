"""The one list of model names, shared by both frameworks.

Each entry says which backbone it uses in each library, where that library keeps pretrained
weights, how the backbone wants its pixels (docs/lessons.md, failure 1: wrong preprocessing left models at
chance), and the head recipe of the earlier projects. Builders live in the backends; this table
imports neither TensorFlow nor torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Backbone:
    name: str
    keras_class: str  # attribute of keras.applications
    keras_module: str  # keras.applications.<module>.preprocess_input
    keras_notop_file: str  # file name under ~/.keras/models for weights='imagenet'
    keras_input: str  # what the keras backbone expects after its preprocess_input, for tests and docs
    timm_name: str
    timm_hub_id: str  # Hugging Face repo timm loads pretrained weights from


@dataclass(frozen=True)
class ModelSpec:
    name: str
    backbone: Optional[Backbone]
    attention: bool
    head_units: tuple[int, ...]
    pooling: str  # "flatten" or "avg"


# What keras.applications.{vgg16,resnet50}.preprocess_input hands the backbone.
CAFFE_INPUT = "caffe: BGR, ImageNet mean subtracted, not scaled (about -124..152)"

BACKBONES = {
    "vgg16": Backbone(
        name="vgg16",
        keras_class="VGG16",
        keras_module="vgg16",
        keras_notop_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        keras_input=CAFFE_INPUT,
        timm_name="vgg16",
        timm_hub_id="timm/vgg16.tv_in1k",
    ),
    "resnet50": Backbone(
        name="resnet50",
        keras_class="ResNet50",
        keras_module="resnet50",
        keras_notop_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        keras_input=CAFFE_INPUT,
        timm_name="resnet50",
        timm_hub_id="timm/resnet50.a1_in1k",
    ),
    "efficientnet_b0": Backbone(
        name="efficientnet_b0",
        keras_class="EfficientNetB0",
        keras_module="efficientnet",
        keras_notop_file="efficientnetb0_notop.h5",
        keras_input="raw 0..255 RGB (the model rescales and normalises inside)",
        timm_name="efficientnet_b0",
        timm_hub_id="timm/efficientnet_b0.ra_in1k",
    ),
}

# docs/lessons.md: the plain CNN flattens into Dense128; backbone models pool into Dense256.
_CNN_HEAD = (128,)
_BACKBONE_HEAD = (256,)


def _entries() -> dict[str, ModelSpec]:
    entries = {
        "cnn": ModelSpec("cnn", None, False, _CNN_HEAD, "flatten"),
        "cnn_attention": ModelSpec("cnn_attention", None, True, _CNN_HEAD, "flatten"),
    }
    for backbone in BACKBONES.values():
        entries[backbone.name] = ModelSpec(backbone.name, backbone, False, _BACKBONE_HEAD, "avg")
        attention_name = f"{backbone.name}_attention"
        entries[attention_name] = ModelSpec(attention_name, backbone, True, _BACKBONE_HEAD, "avg")
    return entries


MODELS: dict[str, ModelSpec] = _entries()
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)
FRAMEWORKS: tuple[str, ...] = ("keras", "torch")

# Channels of the plain CNN's conv blocks (docs/lessons.md) and the SE/CBAM reduction ratio (C/8).
CNN_FILTERS = (32, 64, 128)
ATTENTION_REDUCTION = 8
# BatchNorm moving statistics blend in this fraction of each batch's statistics (torch's convention
# and default). Keras' default (momentum 0.99, i.e. 0.01 here) leaves the moving statistics of a
# backbone trained from scratch for a few hundred steps far from the data, and the same network
# then scores chance in Keras and ~80% in torch (measured on the demo). Both backends use this.
BATCHNORM_UPDATE_FRACTION = 0.1


def head_seed(seed: int) -> int:
    """The seed the head's layers (initialisers, dropout) are drawn from, apart from the backbone's.

    Both backends reseed with it just before building the head, so a head built alone on cached
    features (the feature cache's fast path: no backbone built) starts exactly as the head built on
    top of the backbone, however many draws the backbone's construction took."""
    return (seed * 1_000_003 + 7_919) % 2**31


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model '{name}'; known models: {', '.join(MODEL_NAMES)}") from None
