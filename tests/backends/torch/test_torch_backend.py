"""PyTorch/timm backend: every registry entry builds, preprocesses, freezes, trains and restores best."""

from __future__ import annotations

import math

import numpy as np
import pytest

# Plain imports, no importorskip: `make install` installs both frameworks and `make test` runs this
# folder as the torch session, so a torch, timm or imagebench backend that does not import must
# fail the session, not turn it into skips.
import timm
import torch
from helpers import protocol_mismatches
from imagebench.backends import Backend, Exporter, get_backend, get_exporter
from imagebench.backends import torch_backend as tb
from imagebench.data.arrays import Split, TrialData
from imagebench.training.evaluation import loss_and_accuracy
from imagebench.models.registry import BACKBONES, MODEL_NAMES
from imagebench.training.monitor import EpochMonitor
from imagebench.core.params import make_params

pytestmark = pytest.mark.torch

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
SIZE = 32


def _params(**values):
    return make_params({"framework": "torch", "image_size": SIZE, **values})


def _model(**values):
    params = _params(**values)
    tb.configure(params)
    return tb.build_model(params, 10)


def _own_param_count(model) -> int:
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith("backbone."))


def test_registered_under_torch():
    assert get_backend("torch") is tb


def test_the_torch_modules_provide_the_backend_and_exporter_protocols():
    assert protocol_mismatches(tb, Backend) == []
    assert protocol_mismatches(get_exporter("torch"), Exporter) == []


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_entry_builds_and_predicts(name):
    model = _model(model=name)
    images = np.random.default_rng(0).integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    probabilities = tb.predict_proba(model, images)
    assert probabilities.shape == (2, 10)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    total, trainable = tb.count_params(model)
    assert total == trainable > 0
    assert model.classifier.out_features == 10


def test_flops_are_counted_in_eval_mode_and_leave_training_mode_alone():
    params = _params(model="cnn_attention", attention="cbam", image_size=48)
    model = tb.build_model(params, 10).train()
    flops = tb.count_flops(model, params)
    assert model.training and model.head.training
    # 3x3 convs at 48/24/12 px, Dense 128 on 6x6x128, classifier, CBAM (MLP twice, 7x7 conv 2 -> 1 at 6x6)
    cnn = 2 * (48 * 48 * 32 * 27 + 24 * 24 * 64 * 288 + 12 * 12 * 128 * 576 + 4608 * 128 + 128 * 10)
    assert flops == cnn + 2 * 2 * (128 * 16 + 16 * 128) + 2 * 6 * 6 * 2 * 49


@pytest.mark.parametrize("name", ["cnn", "cnn_attention"])
def test_cnn_preprocessing_scales_to_unit_range(name):
    model = _model(model=name)
    white = tb.preprocess_output(model, np.full((1, SIZE, SIZE, 3), 255, np.uint8))
    black = tb.preprocess_output(model, np.zeros((1, SIZE, SIZE, 3), np.uint8))
    assert white.shape == (1, 3, SIZE, SIZE)
    np.testing.assert_allclose(white, 1.0, atol=1e-6)
    np.testing.assert_allclose(black, 0.0, atol=1e-6)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_preprocessing_is_imagenet_normalisation(name):
    model = _model(model=name)
    white = tb.preprocess_output(model, np.full((1, SIZE, SIZE, 3), 255, np.uint8))
    black = tb.preprocess_output(model, np.zeros((1, SIZE, SIZE, 3), np.uint8))
    expected_white = (1 - IMAGENET_MEAN) / IMAGENET_STD
    expected_black = (0 - IMAGENET_MEAN) / IMAGENET_STD
    for channel in range(3):
        np.testing.assert_allclose(white[0, channel], expected_white[channel], atol=1e-5)
        np.testing.assert_allclose(black[0, channel], expected_black[channel], atol=1e-5)


def test_preprocessing_channel_order_is_rgb():
    model = _model(model="resnet50")
    image = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    image[..., 0] = 255  # pure red stays in channel 0
    out = tb.preprocess_output(model, image)
    np.testing.assert_allclose(out[0, 0], (1 - IMAGENET_MEAN[0]) / IMAGENET_STD[0], atol=1e-5)
    np.testing.assert_allclose(out[0, 1], -IMAGENET_MEAN[1] / IMAGENET_STD[1], atol=1e-5)


def test_vgg16_drops_timm_fc6_fc7_to_match_keras_notop():
    backbone = _model(model="vgg16").backbone
    assert sum(p.numel() for p in backbone.parameters()) == 14_714_688  # Keras VGG16 include_top=False


def test_frozen_vgg16_trains_only_our_layers():
    model = _model(model="vgg16", freeze_backbone=True, train_bn=False)
    total, trainable = tb.count_params(model)
    assert trainable == _own_param_count(model)
    assert total - trainable == 14_714_688


def test_train_bn_unfreezes_only_batchnorm():
    frozen = tb.count_params(_model(model="resnet50", freeze_backbone=True, train_bn=False))[1]
    bn_trainable = tb.count_params(_model(model="resnet50", freeze_backbone=True, train_bn=True))[1]
    unfrozen = tb.count_params(_model(model="resnet50"))[1]
    assert frozen < bn_trainable < unfrozen
    bn_params = sum(
        p.numel()
        for m in _model(model="resnet50").backbone.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
        for p in m.parameters(recurse=False)
    )
    assert bn_trainable - frozen == bn_params


def _batchnorms(model):
    return [m for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def test_frozen_batchnorm_stays_in_inference_mode():
    model = _model(model="resnet50", freeze_backbone=True, train_bn=False)
    model.train()
    assert model.training and model.head.training
    assert all(not bn.training for bn in _batchnorms(model))
    before = [bn.running_mean.clone() for bn in _batchnorms(model)]
    images = torch.randint(0, 256, (4, SIZE, SIZE, 3), dtype=torch.uint8)
    with torch.no_grad():
        model(images)
    for bn, stats in zip(_batchnorms(model), before):
        assert torch.equal(bn.running_mean, stats)


def test_trainable_batchnorm_updates_statistics():
    model = _model(model="resnet50", freeze_backbone=True, train_bn=True)
    model.train()
    assert all(bn.training for bn in _batchnorms(model))
    first = _batchnorms(model)[0]
    before = first.running_mean.clone()
    with torch.no_grad():
        model(torch.randint(0, 256, (4, SIZE, SIZE, 3), dtype=torch.uint8))
    assert not torch.equal(first.running_mean, before)


@pytest.mark.parametrize("name", ["cnn_attention", "resnet50_attention"])
@pytest.mark.parametrize("attention", ["se", "cbam"])
def test_l2_penalty_covers_our_kernels_only(name, attention):
    model = _model(model=name, attention=attention)
    kernels = [
        m.weight
        for part in (model.body, model.attention, model.head, model.classifier)
        if part is not None
        for m in part.modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    ]
    expected = 0.01 * sum(float((w.detach().double() ** 2).sum()) for w in kernels)
    assert tb.l2_penalty(model, 0.01).item() == pytest.approx(expected, rel=1e-5)
    assert float(tb.l2_penalty(model, 0.0)) == 0.0
    regularized = {id(w) for w in tb.regularized_weights(model)}
    assert regularized == {id(w) for w in kernels}
    named = dict(model.named_parameters())
    assert not any(name.endswith("bias") for name, p in named.items() if id(p) in regularized)
    assert not any(name.startswith("backbone.") for name, p in named.items() if id(p) in regularized)
    # attention layers are ours, so they are regularised like the head
    assert any(name.startswith("attention.") for name, p in named.items() if id(p) in regularized)


def test_our_layers_start_like_keras():
    model = _model(model="cnn_attention")
    for module in [model.classifier, model.head[0], model.attention.fc1, model.body[0]]:
        assert torch.count_nonzero(module.bias) == 0
        fan_in = module.weight[0].numel()
        fan_out = module.weight.shape[0] * module.weight[0, 0].numel()
        assert module.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) + 1e-6


def _pattern(n=2):
    return torch.from_numpy(np.random.default_rng(1).uniform(0, 255, (n, SIZE, SIZE, 3)).astype(np.float32))


def _theta(rows, n=2):
    return torch.tensor([rows] * n, dtype=torch.float32)


def test_warp_identity_reproduces_image():
    images = _pattern()
    out = tb.warp(images, _theta([[1, 0, 0], [0, 1, 0]]), torch.ones(2))
    torch.testing.assert_close(out, images, atol=1e-3, rtol=0)


def test_warp_negative_x_scale_flips_width():
    images = _pattern()
    out = tb.warp(images, _theta([[-1, 0, 0], [0, 1, 0]]), torch.ones(2))
    torch.testing.assert_close(out, torch.flip(images, dims=[2]), atol=1e-3, rtol=0)


def test_warp_shift_moves_one_pixel():
    images = _pattern()
    out = tb.warp(images, _theta([[1, 0, 2 / SIZE], [0, 1, 0]]), torch.ones(2))
    # output column j samples input column j + 1; the last column is border-clamped
    torch.testing.assert_close(out[:, :, :-1], images[:, :, 1:], atol=1e-3, rtol=0)


def test_warp_brightness_and_clamp():
    images = _pattern()
    out = tb.warp(images, _theta([[1, 0, 0], [0, 1, 0]]), torch.tensor([0.5, 2.0]))
    torch.testing.assert_close(out[0], images[0] * 0.5, atol=1e-3, rtol=0)
    torch.testing.assert_close(out[1], (images[1] * 2).clamp(max=255), atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", list(BACKBONES))
def test_registry_hub_id_is_timm_default(name):
    backbone = BACKBONES[name]
    assert timm.models.get_pretrained_cfg(backbone.timm_name).hf_hub_id == backbone.timm_hub_id


@pytest.mark.parametrize(
    ("optimizer", "kind"),
    [("rmsprop", torch.optim.RMSprop), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)],
)
def test_optimizers_use_keras_defaults(optimizer, kind):
    extra = {"weight_decay": 0.01} if optimizer == "adamw" else {}
    params = _params(model="efficientnet_b0", freeze_backbone=True, optimizer=optimizer, **extra)
    model = tb.build_model(params, 10)
    opt = tb.make_optimizer(params, model)
    assert type(opt) is kind
    group = opt.param_groups[0]
    assert sum(p.numel() for p in group["params"]) == tb.count_params(model)[1]  # frozen left out
    if optimizer == "rmsprop":
        assert (group["alpha"], group["eps"]) == (0.9, 1e-7)
    if optimizer in ("adam", "adamw"):
        assert group["eps"] == 1e-7
    if optimizer == "adamw":
        assert group["weight_decay"] == 0.01
    if optimizer == "sgd":
        assert group["momentum"] == 0.9


def _split(n_per_class: int, rng: np.random.Generator) -> Split:
    colours = np.array([[220, 30, 30], [30, 220, 30], [30, 30, 220]], dtype=np.float64)
    labels = np.repeat(np.arange(3), n_per_class)
    noise = rng.normal(0, 25, (len(labels), SIZE, SIZE, 3))
    images = np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8)
    return Split(images=images, labels=labels.astype(np.int64))


def _data() -> TrialData:
    rng = np.random.default_rng(7)
    return TrialData(
        train=_split(10, rng),
        val=_split(10, rng),
        test=_split(10, rng),
        class_names=["red", "green", "blue"],
        fingerprint="synthetic",
        source="synthetic",
    )


def _fit(**values):
    params = _params(**{"model": "cnn", "batch_size": 8, "epochs": 4, **values})
    tb.configure(params)
    data = _data()
    model = tb.build_model(params, data.num_classes)
    monitor = EpochMonitor(params)
    tb.fit(model, params, data, monitor)
    return model, data, monitor


def test_fit_restores_best_epoch():
    model, data, monitor = _fit(early_stopping_patience=0, lr_schedule="step", lr_step_epochs=2, l2=1e-3)
    assert 1 <= len(monitor.history) <= 4
    for record in monitor.history:
        assert all(math.isfinite(v) for v in (record.train_loss, record.train_accuracy, record.val_loss, record.val_accuracy))
        assert record.seconds > 0
    assert [r.lr for r in monitor.history] == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])
    val_loss, val_accuracy = loss_and_accuracy(tb.predict_proba(model, data.val.images), data.val.labels)
    assert val_loss == pytest.approx(monitor.best.val_loss, abs=1e-5)
    assert val_accuracy == monitor.best.val_accuracy
    assert monitor.best.val_accuracy > 1 / 3  # the colours are easy: it learned something


def test_fit_train_loss_includes_l2():
    _, _, plain = _fit(epochs=1, learning_rate=1e-9)
    _, _, regularised = _fit(epochs=1, learning_rate=1e-9, l2=0.1)
    assert regularised.history[0].train_loss > plain.history[0].train_loss + 1.0
    assert regularised.history[0].val_loss == pytest.approx(plain.history[0].val_loss, abs=1e-4)


def test_early_stopping_stops_before_epochs():
    # A learning rate this small cannot change any prediction, so val accuracy never improves
    # (strictly) after epoch 1 and patience 1 stops at epoch 2.
    _, _, monitor = _fit(
        learning_rate=1e-9, early_stopping_patience=1, early_stopping_monitor="val_accuracy"
    )
    assert len(monitor.history) == 2 < 4
    assert monitor.best_epoch == 1


def test_augmented_fit_runs_and_leaves_data_untouched():
    data = _data()
    copies = {name: (split.images.copy(), split.labels.copy()) for name, split in (("train", data.train), ("val", data.val))}
    params = _params(model="cnn", batch_size=8, epochs=2, augment="seed000")
    tb.configure(params)
    model = tb.build_model(params, data.num_classes)
    monitor = EpochMonitor(params)
    tb.fit(model, params, data, monitor)
    assert len(monitor.history) == 2
    assert all(math.isfinite(r.train_loss) for r in monitor.history)
    for name, split in (("train", data.train), ("val", data.val)):
        np.testing.assert_array_equal(split.images, copies[name][0])
        np.testing.assert_array_equal(split.labels, copies[name][1])


def test_augment_batch_is_seeded():
    images = _pattern(4)
    from imagebench.training.augment import preset

    first = tb.augment_batch(images, preset("seed000"), np.random.default_rng(3))
    second = tb.augment_batch(images, preset("seed000"), np.random.default_rng(3))
    torch.testing.assert_close(first, second)
    assert not torch.allclose(first, images)
    assert float(first.min()) >= 0 and float(first.max()) <= 255


def test_latency_ms_is_positive():
    model = _model(model="cnn")
    assert tb.latency_ms(model, np.zeros((1, SIZE, SIZE, 3), np.uint8)) > 0


def test_backbone_batchnorm_momentum_is_the_registry_value():
    from imagebench.models.registry import BATCHNORM_UPDATE_FRACTION

    model = tb.build_model(make_params(framework="torch", model="efficientnet_b0", image_size=32), 3)
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and all(m.momentum == BATCHNORM_UPDATE_FRACTION for m in norms)


def test_speed_switches_shape_the_training_step():
    from imagebench.backends.torch_training import TrainStep, make_optimizer

    params = _params(mixed_precision=True, channels_last=True, compile=True)
    model = _model(mixed_precision=True, channels_last=True, compile=True)
    step = TrainStep(model, make_optimizer(params, model), params, torch.device("cpu"))
    assert step.autocast_dtype == torch.bfloat16  # CPU: bfloat16; CUDA would get float16 + a GradScaler
    assert not step.scaler.is_enabled()
    assert isinstance(step.forward, torch._dynamo.eval_frame.OptimizedModule)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    plain = TrainStep(_model(), make_optimizer(_params(), _model()), _params(), torch.device("cpu"))
    assert plain.autocast_dtype is None and plain.forward is plain.model


def test_a_weights_file_of_another_architecture_is_a_clear_error(tmp_path):
    from imagebench.training.weights import WeightsError

    wrong = tmp_path / "not_efficientnet.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), wrong)
    with pytest.raises(WeightsError, match=r"does not fit torch/efficientnet_b0: .*use weights: imagenet / none"):
        _model(model="efficientnet_b0", weights=str(wrong))


def test_a_weights_file_of_the_same_backbone_loads_exactly(tmp_path):
    source = _model(model="efficientnet_b0")
    path = tmp_path / "effnet_headless.pth"
    torch.save(source.backbone.state_dict(), path)
    loaded = _model(model="efficientnet_b0", weights=str(path), seed=7)
    for name, tensor in source.backbone.state_dict().items():
        assert torch.equal(tensor, loaded.backbone.state_dict()[name]), name
