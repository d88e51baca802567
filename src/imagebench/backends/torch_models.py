"""PyTorch/timm models for every registry entry, built to mean what the Keras backend builds.

The model takes (N, S, S, 3) RGB pixels in 0..255 (uint8 or float, NHWC like Keras) and returns
logits. Preprocessing lives inside the model (attribute ``preprocess``) so a backbone can never be
fed pixels prepared for another one (docs/lessons.md, failure 1).

Layers we add (CNN convs, attention, head, classifier) start like Keras' defaults (Glorot-uniform
weights, zero bias) and are the only ones the ``l2`` penalty touches, like Keras'
``kernel_regularizer`` on those layers.
"""

from __future__ import annotations

import os
from typing import Iterator, Optional

import timm
import torch
from torch import nn

from imagebench.models.registry import (
    ATTENTION_REDUCTION,
    BATCHNORM_UPDATE_FRACTION,
    CNN_FILTERS,
    Backbone,
    head_seed,
    model_spec,
)
from imagebench.core.params import TrialParams

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "swish": nn.SiLU, "elu": nn.ELU, "tanh": nn.Tanh}

# Keras' EfficientNetB0 has stochastic depth (drop_connect_rate=0.2, scaled linearly over the
# blocks) even with include_top=False; timm's default is 0, so ask for the same rate.
_TIMM_KWARGS: dict[str, dict] = {"efficientnet_b0": {"drop_path_rate": 0.2}}


def make_activation(name: str) -> nn.Module:
    # nn.GELU's default (exact erf) is Keras' gelu default (approximate=False); ELU alpha=1 both.
    return _ACTIVATIONS[name]()


class Preprocess(nn.Module):
    """NHWC 0..255 pixels -> NCHW float: ``(x / 255 - mean) / std`` (mean 0, std 1 for the CNN)."""

    def __init__(self, mean: tuple[float, ...] = (0.0, 0.0, 0.0), std: tuple[float, ...] = (1.0, 1.0, 1.0)):
        super().__init__()
        # Not persistent: constants of the entry, not learned state; keeps state_dicts to weights.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.permute(0, 3, 1, 2).float() / 255.0
        return (x - self.mean) / self.std


class SqueezeExcite(nn.Module):
    """SE block: global average -> Dense(C/r) ReLU -> Dense(C) sigmoid -> rescale channels."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // ATTENTION_REDUCTION, 1)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * weights[:, :, None, None]


class CBAM(nn.Module):
    """Channel attention (shared MLP on avg- and max-pooled vectors) then 7x7 spatial attention."""

    def __init__(self, channels: int):
        super().__init__()
        hidden = max(channels // ATTENTION_REDUCTION, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.spatial = nn.Conv2d(2, 1, kernel_size=7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel = torch.sigmoid(self.mlp(x.mean(dim=(2, 3))) + self.mlp(x.amax(dim=(2, 3))))
        x = x * channel[:, :, None, None]
        maps = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial(maps))


def cnn_body(activation: str) -> nn.Sequential:
    """The plain CNN of docs/lessons.md: per filter count, 3x3 'same' conv -> activation -> 2x2 max pool."""
    layers: list[nn.Module] = []
    channels = 3
    for filters in CNN_FILTERS:
        layers += [nn.Conv2d(channels, filters, 3, padding=1), make_activation(activation), nn.MaxPool2d(2)]
        channels = filters
    return nn.Sequential(*layers)


def _load_weights_file(model: nn.Module, path: str, backbone: Backbone) -> None:
    """Load a local weights file strictly: timm's own loader accepts a file from another
    architecture with only a warning, leaving a random backbone that looks pretrained."""
    from imagebench.training.weights import wrong_weights_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights={path!r}: no such file (use 'imagenet', 'none' or a weights file)")
    try:
        state = timm.models.load_state_dict(path)
    except Exception as exc:  # not a state dict at all (pickle/safetensors errors vary)
        raise wrong_weights_file(path, "torch", backbone.name, exc) from exc
    # the classifier (and VGG's pre-logits, dropped below) are not part of a headless backbone
    head = tuple(f"{name}." for name in (model.pretrained_cfg.get("classifier"), "pre_logits") if name)
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if not k.startswith(head)}, strict=False)
    missing = [key for key in missing if not key.startswith(head)]
    if missing or unexpected:
        detail = f"{len(missing)} of its tensors missing (e.g. {missing[:2]}), {len(unexpected)} unknown (e.g. {unexpected[:2]})"
        raise wrong_weights_file(path, "torch", backbone.name, ValueError(detail))


def timm_backbone(backbone: Backbone, weights: str) -> nn.Module:
    model = timm.create_model(
        backbone.timm_name,
        num_classes=0,
        global_pool="",
        pretrained=weights == "imagenet",
        **_TIMM_KWARGS.get(backbone.name, {}),
    )
    if weights not in ("none", "imagenet"):
        _load_weights_file(model, weights, backbone)
    if backbone.timm_name.startswith("vgg"):
        # timm keeps VGG's fc6/fc7 as a conv `pre_logits` (ConvMlp, ~119M params) used only by
        # forward_head; Keras' include_top=False has no such layers. Drop them so the model and its
        # parameter count (14.7M) match Keras' VGG16 notop.
        model.pre_logits = nn.Identity()
        model.head = nn.Identity()
    for module in model.modules():
        if _is_batchnorm(module):
            module.momentum = BATCHNORM_UPDATE_FRACTION  # the registry's value, as in the Keras backend
    return model


def _is_batchnorm(module: nn.Module) -> bool:
    # _BatchNorm also covers timm's BatchNormAct2d (EfficientNet).
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def keras_init(modules: Iterator[nn.Module]) -> None:
    """Glorot-uniform kernels, zero biases: Keras' Dense/Conv2D defaults, so both start alike."""
    for module in modules:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


class ImageClassifier(nn.Module):
    """preprocess -> body (CNN) or backbone (timm) -> attention -> pool -> head -> classifier."""

    def __init__(self, params: TrialParams, num_classes: int):
        super().__init__()
        spec = model_spec(params.model)
        self.body: Optional[nn.Module] = None
        self.backbone: Optional[nn.Module] = None
        self.frozen_bn_eval = False
        if spec.backbone is None:
            self.preprocess = Preprocess()
            self.body = cnn_body(params.activation)
        else:
            self.backbone = timm_backbone(spec.backbone, params.weights)
            config = timm.data.resolve_model_data_config(self.backbone)
            self.preprocess = Preprocess(tuple(config["mean"]), tuple(config["std"]))
            if params.freeze_backbone:
                self._freeze_backbone(params.train_bn)
        channels, feature_dim = self._dry_run(params.image_size, params.resolved_pooling)
        self.attention = _attention(params.attention, channels) if spec.attention else nn.Identity()
        self.pool = nn.Flatten() if params.resolved_pooling == "flatten" else nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        for part in [self.body, self.attention]:
            if part is not None:
                keras_init(part.modules())
        self.head, self.classifier = new_head(params, feature_dim, num_classes)

    def _dry_run(self, image_size: int, pooling: str) -> tuple[int, int]:
        """Feature channels and pooled width at this image size (attention keeps the shape)."""
        was_training = self.training
        self.eval()  # no BN statistics updated by the probe
        with torch.no_grad():
            features = self.features(self.preprocess(torch.zeros(1, image_size, image_size, 3)))
        self.train(was_training)
        channels = features.shape[1]
        return channels, (features[0].numel() if pooling == "flatten" else channels)

    def _freeze_backbone(self, train_bn: bool) -> None:
        for module in self.backbone.modules():
            keep = train_bn and _is_batchnorm(module)
            for parameter in module.parameters(recurse=False):
                parameter.requires_grad = keep
        # Keras runs a non-trainable BatchNormalization in inference mode; see train().
        self.frozen_bn_eval = not train_bn

    def own_parts(self) -> list[nn.Module]:
        """The layers we build (never the pretrained backbone): initialised and l2-regularised."""
        parts = [self.attention, self.head, self.classifier]
        return ([self.body] if self.body is not None else []) + parts

    def train(self, mode: bool = True) -> "ImageClassifier":
        super().train(mode)
        if self.frozen_bn_eval and self.backbone is not None:
            for module in self.backbone.modules():
                if _is_batchnorm(module):
                    module.eval()  # frozen BN: running statistics neither used per batch nor updated
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) if self.body is not None else self.backbone.forward_features(x)

    def pooled(self, pixels: torch.Tensor) -> torch.Tensor:
        """What the head receives: the pooled (attended) features of the pixels."""
        return self.pool(self.attention(self.features(self.preprocess(pixels))))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.pooled(pixels)))


def _attention(kind: str, channels: int) -> nn.Module:
    return SqueezeExcite(channels) if kind == "se" else CBAM(channels)


def _head(in_features: int, units: list[int], activation: str, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in units:
        layers += [nn.Linear(in_features, width), make_activation(activation), nn.Dropout(dropout)]
        in_features = width
    return nn.Sequential(*layers)


def new_head(params: TrialParams, feature_dim: int, num_classes: int) -> tuple[nn.Sequential, nn.Linear]:
    """The head and classifier, initialised from ``head_seed`` (see there: a head built alone on
    cached features starts exactly as one built on top of the backbone)."""
    torch.manual_seed(head_seed(params.seed))
    head = _head(feature_dim, params.resolved_head_units, params.activation, params.dropout)
    last = params.resolved_head_units[-1] if params.resolved_head_units else feature_dim
    classifier = nn.Linear(last, num_classes)
    for part in (head, classifier):
        keras_init(part.modules())
    return head, classifier


def build_model(params: TrialParams, num_classes: int) -> ImageClassifier:
    return ImageClassifier(params, num_classes)


class HeadOnly(nn.Module):
    """The head and classifier of an ImageClassifier, fed pooled features (the feature cache).

    Its state_dict keys are the full model's (``head.*``, ``classifier.*``), so its weights load into
    the full model and back.
    """

    def __init__(self, head: nn.Sequential, classifier: nn.Linear):
        super().__init__()
        self.head, self.classifier = head, classifier

    def own_parts(self) -> list[nn.Module]:
        return [self.head, self.classifier]  # the same kernels the full model regularises (its
        # attention is Identity and its backbone frozen whenever the feature cache applies)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(features))


def head_model(model: ImageClassifier) -> HeadOnly:
    """The full model's own head modules: training it trains the full model's head."""
    return HeadOnly(model.head, model.classifier)


def build_head(params: TrialParams, num_classes: int, feature_dim: int) -> HeadOnly:
    """A head alone, fed pooled features of width ``feature_dim``: on a feature-cache hit no backbone
    is built at all; it starts as ``head_model(build_model(params, num_classes))`` would."""
    return HeadOnly(*new_head(params, feature_dim, num_classes))


class BackboneOnly(nn.Module):
    """Pixels -> pooled features: the part of an ImageClassifier before the head (the feature cache)."""

    def __init__(self, model: ImageClassifier):
        super().__init__()
        before_head = (model.preprocess, model.body, model.backbone, model.attention, model.pool)
        self.parts = nn.ModuleList([part for part in before_head if part is not None])  # shared, not copied
        self._pooled = model.pooled  # the classifier's own code path

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._pooled(pixels)


def backbone_model(model: ImageClassifier) -> BackboneOnly:
    return BackboneOnly(model)


def regularized_weights(model: ImageClassifier) -> list[torch.Tensor]:
    """Kernels of our Conv2d/Linear layers: what Keras' kernel_regularizer covers (no biases)."""
    return [
        module.weight
        for part in model.own_parts()
        for module in part.modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    ]


def l2_penalty(model: ImageClassifier, l2: float, weights: Optional[list[torch.Tensor]] = None) -> torch.Tensor:
    """``l2 * sum(w**2)`` over our kernels, exactly Keras' L2(l2) regulariser summed over layers.
    ``weights``: ``regularized_weights(model)``, found once by a loop that adds this every step."""
    weights = regularized_weights(model) if weights is None else weights
    if l2 == 0.0 or not weights:
        return torch.zeros((), device=next(model.parameters()).device)
    return l2 * sum(weight.pow(2).sum() for weight in weights)
