"""Keras model builders for every registry entry: preprocessing, body, attention, pooling, head.

Each model takes raw 0..255 RGB pixels and does its own preprocessing inside, so a backbone can
never receive the wrong pixel scale (docs/lessons.md, failure 1).
"""

from __future__ import annotations

from imagebench.backends import load_tensorflow  # noqa: E402

load_tensorflow()  # before keras: its environment, and TensorFlow's start-up chatter kept out of outputs

from typing import Optional  # noqa: E402

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

from imagebench.models.registry import (  # noqa: E402
    ATTENTION_REDUCTION,
    BATCHNORM_UPDATE_FRACTION,
    CNN_FILTERS,
    ModelSpec,
    head_seed,
    model_spec,
)
from imagebench.core.params import TrialParams  # noqa: E402

# Preprocess mode of the plain CNN; backbones use their keras.applications module name instead.
UNIT_SCALE = "unit"


def _l2(l2: float) -> Optional[keras.regularizers.Regularizer]:
    # L2(l2) adds l2 * sum(w^2), the same definition the torch backend uses; None keeps l2=0 free.
    return keras.regularizers.L2(l2) if l2 > 0 else None


@keras.saving.register_keras_serializable(package="imagebench")
class BackbonePreprocess(layers.Layer):
    """Cast pixels to float32 and apply the entry's preprocessing.

    ``mode`` is ``"unit"`` (x / 255, the plain CNN) or a ``keras.applications`` module name whose
    ``preprocess_input`` the backbone was trained with (vgg16/resnet50: caffe BGR minus mean;
    efficientnet: identity, the model rescales inside).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        if self.mode == UNIT_SCALE:
            return x / 255.0
        return getattr(keras.applications, self.mode).preprocess_input(x)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="imagebench")
class SqueezeExcite(layers.Layer):
    """SE block: global-average 'squeeze', C -> C/r -> C sigmoid gate, channel-wise rescale."""

    def __init__(self, channels: int, reduction: int = ATTENTION_REDUCTION, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.reduction, self.l2 = channels, reduction, l2
        hidden = max(channels // reduction, 1)
        self.squeeze = layers.Dense(hidden, activation="relu", kernel_regularizer=_l2(l2), name="squeeze")
        self.excite = layers.Dense(channels, activation="sigmoid", kernel_regularizer=_l2(l2), name="excite")

    def call(self, inputs):
        gate = self.excite(self.squeeze(ops.mean(inputs, axis=(1, 2))))
        return inputs * gate[:, None, None, :]

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "reduction": self.reduction, "l2": self.l2}


@keras.saving.register_keras_serializable(package="imagebench")
class CBAM(layers.Layer):
    """CBAM: channel attention (shared MLP over avg- and max-pooled vectors), then spatial attention."""

    def __init__(self, channels: int, reduction: int = ATTENTION_REDUCTION, l2: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.reduction, self.l2 = channels, reduction, l2
        hidden = max(channels // reduction, 1)
        self.mlp_hidden = layers.Dense(hidden, activation="relu", kernel_regularizer=_l2(l2), name="mlp_hidden")
        self.mlp_out = layers.Dense(channels, kernel_regularizer=_l2(l2), name="mlp_out")
        self.spatial = layers.Conv2D(
            1, 7, padding="same", activation="sigmoid", kernel_regularizer=_l2(l2), name="spatial"
        )

    def call(self, inputs):
        # The MLP is shared: the same two Dense layers see both pooled vectors before the sum.
        avg = self.mlp_out(self.mlp_hidden(ops.mean(inputs, axis=(1, 2))))
        peak = self.mlp_out(self.mlp_hidden(ops.max(inputs, axis=(1, 2))))
        x = inputs * ops.sigmoid(avg + peak)[:, None, None, :]
        maps = ops.concatenate([ops.mean(x, axis=-1, keepdims=True), ops.max(x, axis=-1, keepdims=True)], axis=-1)
        return x * self.spatial(maps)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels, "reduction": self.reduction, "l2": self.l2}


def _backbone_weights(params: TrialParams) -> Optional[str]:
    # 'none' -> random init, 'imagenet' -> keras download/cache, anything else is a weights file path.
    return None if params.weights == "none" else params.weights


def freeze_backbone(backbone: keras.Model, train_bn: bool) -> None:
    """Make every backbone layer non-trainable, BatchNormalization excepted when ``train_bn``.

    Keras 3: a layer with ``trainable=False`` reports no trainable weights at all, even for
    sub-layers flipped back to trainable, so "frozen but BN trainable" must be set per layer with
    the backbone itself left trainable (the applications models are flat, one level of layers).
    """
    if not train_bn:
        backbone.trainable = False
        return
    for layer in backbone.layers:
        layer.trainable = isinstance(layer, layers.BatchNormalization)


def _cnn_body(x, params: TrialParams):
    for index, filters in enumerate(CNN_FILTERS, start=1):
        x = layers.Conv2D(
            filters,
            3,
            padding="same",
            activation=params.activation,
            kernel_regularizer=_l2(params.l2),
            name=f"conv{index}",
        )(x)
        x = layers.MaxPooling2D(2, name=f"pool{index}")(x)
    return x


def _backbone_body(x, spec: ModelSpec, params: TrialParams):
    size = params.image_size
    constructor = getattr(keras.applications, spec.backbone.keras_class)
    try:
        backbone = constructor(
            include_top=False, weights=_backbone_weights(params), input_shape=(size, size, 3), name="backbone"
        )
    except (ValueError, KeyError, OSError) as exc:  # a file from another architecture, or not weights
        if params.weights in ("none", "imagenet"):
            raise
        from imagebench.training.weights import wrong_weights_file

        raise wrong_weights_file(params.weights, "keras", params.model, exc) from exc
    _set_batchnorm_momentum(backbone)
    if params.freeze_backbone:
        freeze_backbone(backbone, params.train_bn)
    return backbone(x)


def _set_batchnorm_momentum(backbone: keras.Model) -> None:
    for layer in backbone.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 1.0 - BATCHNORM_UPDATE_FRACTION  # Keras counts the kept fraction


def _attention(x, params: TrialParams):
    block = SqueezeExcite if params.attention == "se" else CBAM
    return block(int(x.shape[-1]), ATTENTION_REDUCTION, params.l2, name="attention")(x)


def _head(x, params: TrialParams, num_classes: int):
    # Keras draws each initialiser's and dropout layer's seed from Python's random at construction:
    # reseeded here, a head built alone (build_head) starts as the one built on top of the backbone.
    keras.utils.set_random_seed(head_seed(params.seed))
    for index, units in enumerate(params.resolved_head_units, start=1):
        name = f"head_dense{index}"
        x = layers.Dense(units, activation=params.activation, kernel_regularizer=_l2(params.l2), name=name)(x)
        x = layers.Dropout(params.dropout, name=f"head_dropout{index}")(x)
    # float32 even under a mixed-precision policy: a float16 softmax underflows and its loss is unstable
    return layers.Dense(num_classes, activation="softmax", kernel_regularizer=_l2(params.l2), dtype="float32", name="classifier")(x)


def build_model(params: TrialParams, num_classes: int) -> keras.Model:
    """The registry entry ``params.model`` as a functional model: 0..255 RGB in, probabilities out."""
    spec = model_spec(params.model)
    size = params.image_size
    inputs = keras.Input((size, size, 3), dtype="float32", name="pixels")
    mode = UNIT_SCALE if spec.backbone is None else spec.backbone.keras_module
    x = BackbonePreprocess(mode, name="preprocess")(inputs)
    x = _cnn_body(x, params) if spec.backbone is None else _backbone_body(x, spec, params)
    if spec.attention:
        x = _attention(x, params)
    if params.resolved_pooling == "flatten":
        x = layers.Flatten(name="flatten")(x)
    else:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = _head(x, params, num_classes)
    return keras.Model(inputs, outputs, name=f"{params.model}_keras")


def _pooling_layer(model: keras.Model) -> layers.Layer:
    return next(layer for layer in model.layers if layer.name in ("avg_pool", "flatten"))


def head_model(model: keras.Model) -> keras.Model:
    """The layers after pooling as a model of their own, fed pooled features (the feature cache).

    It reuses the very same layer objects, so training it trains the full model's head.
    """
    pooling = _pooling_layer(model)
    after = model.layers[model.layers.index(pooling) + 1 :]
    features = keras.Input(tuple(pooling.output.shape[1:]), dtype="float32", name="features")
    x = features
    for layer in after:  # Dense / Dropout ... classifier: a plain chain after pooling
        x = layer(x)
    return keras.Model(features, x, name=f"{model.name}_head")


def new_head(params: TrialParams, num_classes: int, feature_dim: int) -> keras.Model:
    """A head alone, fed pooled features of width ``feature_dim``: on a feature-cache hit no backbone
    is built at all. Same layers, names and initial weights as ``head_model(build_model(...))``."""
    features = keras.Input((feature_dim,), dtype="float32", name="features")
    return keras.Model(features, _head(features, params, num_classes), name=f"{params.model}_keras_head")


def backbone_model(model: keras.Model) -> keras.Model:
    """Pixels -> pooled features: the layers up to pooling, as a model of their own (the feature cache)."""
    return keras.Model(model.inputs, _pooling_layer(model).output, name=f"{model.name}_backbone")
