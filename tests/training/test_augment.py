"""The augmentation recipe itself (framework-neutral); tests/backends/keras and tests/backends/torch check the warps."""

import numpy as np
import pytest

from imagebench.training import augment


def _decompose(theta):
    linear, shift = theta[:, :, :2], theta[:, :, 2]
    return linear, shift


def test_none_is_identity():
    theta, brightness = augment.sample(16, augment.preset("none"), np.random.default_rng(0))
    assert np.allclose(theta, [[1, 0, 0], [0, 1, 0]]) and np.allclose(brightness, 1)


def test_same_seed_same_draws_different_seed_different():
    spec = augment.preset("seed000")
    a = augment.sample(8, spec, np.random.default_rng(1))
    b = augment.sample(8, spec, np.random.default_rng(1))
    c = augment.sample(8, spec, np.random.default_rng(2))
    assert np.array_equal(a[0], b[0]) and not np.allclose(a[0], c[0])


def test_seed000_crop_keeps_between_60_and_100_percent_of_the_area():
    spec = augment.AugmentSpec(crop_scale=(0.6, 1.0))  # the crop alone
    theta, _ = augment.sample(2000, spec, np.random.default_rng(0))
    linear, shift = _decompose(theta)
    area = np.abs(np.linalg.det(linear))  # fraction of the (2x2 normalised) image sampled
    assert area.min() >= 0.6 * 0.75 - 1e-6 and area.max() <= 1.0 + 1e-6  # clipping to the frame can only shrink it
    assert np.median(area) > 0.7
    # the crop stays inside the image: every corner maps into [-1, 1]
    corners = np.array([[-1, -1, 1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]]).T
    assert np.abs(theta @ corners).max() <= 1 + 1e-6


def test_seed000_is_the_product_project_recipe():
    spec = augment.preset("seed000")
    assert (spec.rotation_degrees, spec.shift_fraction, spec.shear, spec.zoom) == (20, 0.3, 0.3, (0.8, 1.2))
    assert spec.horizontal_flip and not spec.vertical_flip and spec.crop_scale == (0.6, 1.0)


def test_flip_only_spec_flips_about_half():
    theta, _ = augment.sample(4000, augment.AugmentSpec(horizontal_flip=True), np.random.default_rng(0))
    flipped = theta[:, 0, 0] < 0
    assert 0.45 < flipped.mean() < 0.55 and np.allclose(np.abs(theta[:, 0, 0]), 1)


def test_pixel_projective_of_identity_is_identity():
    theta = np.array([[[1, 0, 0], [0, 1, 0]]], dtype=np.float32)
    assert np.allclose(augment.theta_to_pixel_projective(theta, 32, 48), [[1, 0, 0, 0, 1, 0, 0, 0]], atol=1e-6)


def test_unknown_preset_is_named():
    with pytest.raises(KeyError, match="known: none, light, seed000"):
        augment.preset("heavy")
