"""The Keras backend: every registry entry builds and preprocesses its own pixels, freezing and l2
count the right weights, the warp matches the augment convention, and fit restores the best epoch."""

from __future__ import annotations

import math

import numpy as np
import pytest

# Plain imports, no importorskip: `make install` installs both frameworks and `make test` runs this
# folder as the Keras session, so a Keras (or imagebench backend) that does not import must fail
# the session, not turn it into skips.
import keras
from helpers import protocol_mismatches
from imagebench.backends import Backend, Exporter, get_backend, get_exporter
from imagebench.backends import keras_backend as kb
from imagebench.backends import keras_training
from imagebench.data.arrays import Split, TrialData
from imagebench.training.evaluation import loss_and_accuracy
from imagebench.models.registry import MODEL_NAMES
from imagebench.training.monitor import EpochMonitor
from imagebench.core.params import make_params

pytestmark = pytest.mark.keras

SIZE = 32
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])


def _params(**overrides):
    return make_params(image_size=SIZE, **overrides)


def _build(num_classes=3, **overrides):
    params = _params(**overrides)
    kb.configure(params)
    return kb.build_model(params, num_classes)


def _pixels(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_the_keras_modules_provide_the_backend_and_exporter_protocols():
    assert get_backend("keras") is kb
    assert protocol_mismatches(kb, Backend) == []
    assert protocol_mismatches(get_exporter("keras"), Exporter) == []


# --- building and preprocessing


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_entry_builds_and_outputs_probabilities(name):
    model = _build(num_classes=4, model=name)
    probs = np.asarray(model(_pixels(2), training=False))
    assert probs.shape == (2, 4)
    assert not np.isnan(probs).any()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert kb.predict_proba(model, _pixels(3), batch_size=2).shape == (3, 4)


def _white_black(model):
    images = np.stack([np.full((SIZE, SIZE, 3), 255, np.uint8), np.zeros((SIZE, SIZE, 3), np.uint8)])
    out = kb.preprocess_output(model, images)
    return out[0], out[1]


@pytest.mark.parametrize("name", ["cnn", "cnn_attention"])
def test_cnn_preprocessing_scales_to_unit(name):
    white, black = _white_black(_build(model=name))
    np.testing.assert_allclose(white, 1.0, atol=1e-6)
    np.testing.assert_allclose(black, 0.0, atol=1e-6)


@pytest.mark.parametrize("name", ["vgg16", "resnet50_attention"])
def test_caffe_backbones_get_bgr_minus_imagenet_mean(name):
    white, black = _white_black(_build(model=name))
    np.testing.assert_allclose(white, np.broadcast_to([151.061, 138.221, 131.32], white.shape), atol=1e-3)
    np.testing.assert_allclose(black, np.broadcast_to(-CAFFE_MEAN_BGR, black.shape), atol=1e-3)


def test_caffe_preprocessing_swaps_red_and_blue():
    red = np.zeros((1, SIZE, SIZE, 3), np.uint8)
    red[..., 0] = 255
    out = kb.preprocess_output(_build(model="vgg16"), red)[0, 0, 0]
    # Red input lands in the last (R of BGR) channel; B and G stay at minus their means.
    np.testing.assert_allclose(out, [-103.939, -116.779, 255 - 123.68], atol=1e-3)


def test_efficientnet_gets_raw_pixels():
    white, black = _white_black(_build(model="efficientnet_b0"))
    np.testing.assert_allclose(white, 255.0)
    np.testing.assert_allclose(black, 0.0)


# --- freezing and regularisation


def _own_layers(model):
    return [layer for layer in model.layers if layer.name != "backbone"]


def test_frozen_vgg16_trains_only_attention_and_head():
    model = _build(model="vgg16_attention", freeze_backbone=True, train_bn=False)
    total, trainable = kb.count_params(model)
    expected = sum(layer.count_params() for layer in _own_layers(model))
    assert trainable == expected
    assert total == expected + model.get_layer("backbone").count_params()
    assert model.get_layer("attention").count_params() > 0


def test_resnet50_train_bn_keeps_only_batchnorm_trainable():
    _, frozen = kb.count_params(_build(model="resnet50", freeze_backbone=True, train_bn=False))
    with_bn_model = _build(model="resnet50", freeze_backbone=True, train_bn=True)
    _, with_bn = kb.count_params(with_bn_model)
    _, unfrozen = kb.count_params(_build(model="resnet50"))
    assert frozen < with_bn < unfrozen
    # Exactly the gammas and betas of the backbone's BatchNormalization layers were added.
    backbone = with_bn_model.get_layer("backbone")
    bn_affine = sum(
        2 * layer.gamma.shape[0] for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
    )
    assert with_bn - frozen == bn_affine
    assert len(with_bn_model.trainable_weights) == len(
        [w for w in with_bn_model.weights if w.trainable]
    )  # nested model and outer model agree


@pytest.mark.parametrize(("name", "attention"), [("cnn_attention", "cbam"), ("vgg16_attention", "se")])
def test_l2_penalty_is_sum_of_squared_kernels_of_our_layers(name, attention):
    l2 = 0.01
    model = _build(model=name, attention=attention, l2=l2)
    backbone_ids = {id(w) for w in model.get_layer("backbone").weights} if name.startswith("vgg16") else set()
    kernels = [w for w in model.trainable_weights if w.name == "kernel" and id(w) not in backbone_ids]
    # cnn: 3 convs; cbam: 2 mlp + 1 spatial conv; se: 2 dense; head: 1 dense + classifier.
    assert len(kernels) == (3 + 3 + 2 if name == "cnn_attention" else 2 + 2)
    expected = l2 * sum(float(np.sum(np.square(np.asarray(w)))) for w in kernels)
    actual = float(sum(float(np.asarray(loss)) for loss in model.losses))
    assert actual == pytest.approx(expected, rel=1e-4)
    assert not _build(model=name, attention=attention, l2=0.0).losses


# --- augmentation warp


def _image(seed=1):
    return np.random.default_rng(seed).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)


def _theta(rows):
    return np.array([rows], dtype=np.float32)


def test_identity_theta_reproduces_image():
    image = _image()
    np.testing.assert_allclose(keras_training._warp(image, _theta([[1, 0, 0], [0, 1, 0]])), image, atol=1e-3)


def test_flip_theta_flips_width():
    image = _image()
    out = keras_training._warp(image, _theta([[-1, 0, 0], [0, 1, 0]]))
    np.testing.assert_allclose(out, np.flip(image, axis=2), atol=1e-3)


def test_shift_theta_samples_one_pixel_to_the_right():
    image = _image()
    out = keras_training._warp(image, _theta([[1, 0, 2 / SIZE], [0, 1, 0]]))
    # Output column j samples input column j + 1 (theta maps output -> input).
    np.testing.assert_allclose(out[:, :, :-1], image[:, :, 1:], atol=1e-3)
    np.testing.assert_allclose(out[:, :, -1], image[:, :, -1], atol=1e-3)  # NEAREST edge fill


def test_train_batches_are_deterministic_and_augmented_only_when_asked():
    from imagebench.training import augment

    split = Split(_pixels(10, seed=3), np.arange(10) % 3)
    plain = keras_training.TrainBatches(split, 4, augment.preset("none"), seed=0, first_epoch=1)
    assert len(plain) == 3 and len(plain[2][0]) == 2
    images, labels = plain[0]
    assert images.dtype == np.float32
    np.testing.assert_array_equal(images, split.images[plain.order[:4]])
    np.testing.assert_array_equal(labels, split.labels[plain.order[:4]])

    def augmented():
        return keras_training.TrainBatches(split, 4, augment.preset("seed000"), seed=0, first_epoch=1)

    first, second = augmented(), augmented()
    for index in (1, 0, 1):  # order of access does not matter: draws are made per epoch up front
        np.testing.assert_array_equal(first[index][0], second[index][0])
    assert not np.allclose(first[0][0], split.images[first.order[:4]])
    assert first[0][0].min() >= 0 and first[0][0].max() <= 255
    order_before = first.order.copy()
    first.on_epoch_end()
    assert not np.array_equal(order_before, first.order)  # reshuffled for the next epoch
    # epoch 2's draws depend on (seed, epoch) only: a run continued at epoch 2 sees the same batches
    continued = keras_training.TrainBatches(split, 4, augment.preset("seed000"), seed=0, first_epoch=2)
    np.testing.assert_array_equal(continued.order, first.order)
    np.testing.assert_array_equal(continued[0][0], first[0][0])


# --- fit


def _colour_split(n, seed, num_classes=3):
    """Class k is a flat colour (distinct per class) plus noise: learnable in a few epochs."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % num_classes
    colours = np.array([[220, 40, 40], [40, 220, 40], [40, 40, 220]], dtype=np.float32)[labels]
    images = colours[:, None, None, :] + rng.normal(0, 20, (n, SIZE, SIZE, 3))
    return Split(np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.int64))


def _colour_data():
    return TrialData(
        train=_colour_split(30, 0),
        val=_colour_split(30, 1),
        test=_colour_split(30, 2),
        class_names=["red", "green", "blue"],
        fingerprint="synthetic",
        source="synthetic",
    )


def _fit(data, **overrides):
    params = _params(**overrides)
    kb.configure(params)
    model = kb.build_model(params, data.num_classes)
    monitor = EpochMonitor(params)
    kb.fit(model, params, data, monitor)
    return model, monitor


def _assert_best_restored(model, monitor, data):
    val_loss, val_accuracy = loss_and_accuracy(kb.predict_proba(model, data.val.images), data.val.labels)
    assert val_loss == pytest.approx(monitor.best.val_loss, abs=1e-5)
    assert val_accuracy == pytest.approx(monitor.best.val_accuracy)


def test_fit_records_epochs_and_restores_best_weights():
    data = _colour_data()
    model, monitor = _fit(
        data, model="cnn", epochs=4, batch_size=8, learning_rate=1e-3, lr_schedule="step", lr_step_epochs=1
    )
    assert 1 <= len(monitor.history) <= 4
    assert [r.epoch for r in monitor.history] == list(range(1, len(monitor.history) + 1))
    for record in monitor.history:
        values = [record.train_loss, record.train_accuracy, record.val_loss, record.val_accuracy, record.seconds]
        assert all(math.isfinite(v) for v in values)
    # The step schedule halves every epoch and the optimizer really ran with the monitor's rate.
    assert [r.lr for r in monitor.history] == pytest.approx([1e-3 * 0.5**i for i in range(len(monitor.history))])
    assert float(model.optimizer.learning_rate) == pytest.approx(monitor.history[-1].lr)
    assert monitor.best.val_accuracy > 1 / 3  # it learned something from flat colours
    _assert_best_restored(model, monitor, data)


def test_early_stopping_stops_when_val_does_not_improve():
    # lr 1e-9 leaves the weights as they were, so val_accuracy cannot strictly improve after
    # epoch 1 and patience 1 must stop at epoch 2.
    data = _colour_data()
    model, monitor = _fit(
        data,
        model="cnn",
        epochs=6,
        batch_size=16,
        optimizer="sgd",
        momentum=0.0,
        learning_rate=1e-9,
        early_stopping_patience=1,
        early_stopping_monitor="val_accuracy",
    )
    assert len(monitor.history) == 2
    assert monitor.best.epoch == 1
    _assert_best_restored(model, monitor, data)


def test_augmented_fit_leaves_data_untouched_and_validates_on_raw_images():
    data = _colour_data()
    val_before, train_before = data.val.images.copy(), data.train.images.copy()
    model, monitor = _fit(data, model="cnn_attention", augment="seed000", epochs=2, batch_size=8)
    assert len(monitor.history) == 2
    np.testing.assert_array_equal(data.val.images, val_before)
    np.testing.assert_array_equal(data.train.images, train_before)
    # Val numbers recorded during fit are reproduced on the raw val images: val was not augmented.
    _assert_best_restored(model, monitor, data)


def test_latency_and_param_counts():
    model = _build(model="cnn")
    assert kb.latency_ms(model, _pixels(1)) > 0
    total, trainable = kb.count_params(model)
    assert total == trainable == model.count_params()


def test_flops_reuse_the_traced_inference_graph_and_count_shared_layers_per_call():
    model = _build(model="cnn_attention", attention="cbam", num_classes=10)
    kb.predict_proba(model, _pixels(5), 4)  # two batch shapes: a trace with a None batch
    kb.latency_ms(model, _pixels(1))
    forward = keras_training.inference_fn(model)
    traces = forward.experimental_get_tracing_count()
    kb._FLOPS_BY_ARCHITECTURE.clear()  # counted here, not remembered from another test
    flops = kb.count_flops(model, _params(model="cnn_attention", attention="cbam"))
    assert forward.experimental_get_tracing_count() == traces  # no new trace in a trial
    # the CNN's convs and head (see tests/test_flops.py), CBAM's shared MLP on both pooled vectors
    # (128 -> 16 -> 128, twice) and its 7x7 conv from 2 maps to 1 at 4x4
    cnn = 2 * (32 * 32 * 32 * 27 + 16 * 16 * 64 * 288 + 8 * 8 * 128 * 576 + 2048 * 128 + 128 * 10)
    assert flops == cnn + 2 * 2 * (128 * 16 + 16 * 128) + 2 * 4 * 4 * 2 * 49


def test_backbone_batchnorm_momentum_matches_torch_convention():
    from imagebench.models.registry import BATCHNORM_UPDATE_FRACTION

    model = kb.build_model(make_params(model="resnet50", image_size=32), 3)
    norms = [layer for layer in model.get_layer("backbone").layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and all(layer.momentum == pytest.approx(1 - BATCHNORM_UPDATE_FRACTION) for layer in norms)


def test_mixed_precision_policy_is_set_per_trial_and_keeps_a_float32_softmax():
    mixed = _params(mixed_precision=True)
    kb.configure(mixed)
    model = kb.build_model(mixed, 10)
    dense = model.get_layer("conv1")
    assert dense.compute_dtype == "bfloat16"  # no GPU here: bfloat16; a GPU gets float16
    assert model.get_layer("classifier").compute_dtype == "float32"
    assert model(_pixels(2)).dtype == "float32"
    kb.configure(_params())  # the next trial in this process is float32 again
    assert kb.build_model(_params(), 10).get_layer("classifier").compute_dtype == "float32"
    assert keras.mixed_precision.global_policy().name == "float32"


def test_compile_switch_turns_on_xla():
    from imagebench.backends.keras_training import compile_model

    model = kb.build_model(_params(compile=True), 10)
    compile_model(model, _params(compile=True))
    assert model.jit_compile is True


def test_a_weights_file_of_another_architecture_is_a_clear_error(tmp_path):
    from imagebench.training.weights import WeightsError

    wrong = tmp_path / "not_efficientnet.weights.h5"
    tiny = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    tiny.save_weights(wrong)
    with pytest.raises(WeightsError, match=r"does not fit keras/efficientnet_b0: .*use weights: imagenet / none"):
        kb.build_model(_params(model="efficientnet_b0", weights=str(wrong)), 10)
