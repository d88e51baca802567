"""Augmentation as a framework-neutral recipe.

Random parameters are drawn here, in NumPy, once per image; each backend only *applies* the
resulting affine matrices with its own batched warp (TF ImageProjectiveTransformV3, torch
grid_sample). So `seed000` is literally the same recipe in Keras and PyTorch, and augmentation is
only ever applied to training batches (docs/lessons.md, failure 4: augmented validation data).

Convention: ``theta`` has shape (N, 2, 3) and maps an *output* point to the *input* point it is
sampled from, both in normalised coordinates (x right, y down, -1..1 across pixel edges), exactly
what ``torch.nn.functional.affine_grid(..., align_corners=False)`` takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


@dataclass(frozen=True)
class AugmentSpec:
    rotation_degrees: float = 0.0  # uniform in ±
    shift_fraction: float = 0.0  # uniform in ± of width/height, independently
    shear: float = 0.0  # shear factor, uniform in ±
    zoom: tuple[float, float] = (1.0, 1.0)  # >1 shows more of the image, <1 magnifies (Keras convention)
    horizontal_flip: bool = False
    vertical_flip: bool = False
    brightness: tuple[float, float] = (1.0, 1.0)  # multiplicative
    crop_scale: Optional[tuple[float, float]] = None  # random-resized crop, area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)

    @property
    def is_identity(self) -> bool:
        return self == AugmentSpec()


PRESETS: dict[str, AugmentSpec] = {
    "none": AugmentSpec(),
    "light": AugmentSpec(rotation_degrees=10, shift_fraction=0.1, zoom=(0.9, 1.1), horizontal_flip=True),
    # The product project's recipe (docs/lessons.md): rotation ±20°, shift ±30%, shear 0.3, zoom 0.8-1.2,
    # horizontal flip, and random-resized crop over (0.6, 1.0) of the area because products fill
    # most of the frame (the usual (0.08, 1.0) would crop them away).
    "seed000": AugmentSpec(
        rotation_degrees=20,
        shift_fraction=0.3,
        shear=0.3,
        zoom=(0.8, 1.2),
        horizontal_flip=True,
        crop_scale=(0.6, 1.0),
    ),
}


def preset(name: str) -> AugmentSpec:
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(f"unknown augmentation preset '{name}'; known: {', '.join(PRESETS)}") from None


def _crop_matrices(n: int, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    """Random-resized crop as output->input matrices: pick an area fraction and aspect, place it."""
    matrices = np.tile(np.eye(3), (n, 1, 1))
    if spec.crop_scale is None:
        return matrices
    area = rng.uniform(*spec.crop_scale, size=n)
    log_ratio = rng.uniform(np.log(spec.crop_ratio[0]), np.log(spec.crop_ratio[1]), size=n)
    ratio = np.exp(log_ratio)
    width = np.minimum(np.sqrt(area * ratio), 1.0)
    height = np.minimum(np.sqrt(area / ratio), 1.0)
    center_x = rng.uniform(-1 + width, 1 - width + 1e-12)
    center_y = rng.uniform(-1 + height, 1 - height + 1e-12)
    matrices[:, 0, 0], matrices[:, 1, 1] = width, height
    matrices[:, 0, 2], matrices[:, 1, 2] = center_x, center_y
    return matrices


def _affine_matrices(n: int, spec: AugmentSpec, rng: np.random.Generator) -> np.ndarray:
    angle = np.deg2rad(rng.uniform(-spec.rotation_degrees, spec.rotation_degrees, size=n))
    shear = rng.uniform(-spec.shear, spec.shear, size=n)
    zoom_x = rng.uniform(*spec.zoom, size=n)
    zoom_y = rng.uniform(*spec.zoom, size=n)
    shift_x = 2 * rng.uniform(-spec.shift_fraction, spec.shift_fraction, size=n)
    shift_y = 2 * rng.uniform(-spec.shift_fraction, spec.shift_fraction, size=n)
    flip_x = np.where(spec.horizontal_flip & (rng.random(n) < 0.5), -1.0, 1.0)
    flip_y = np.where(spec.vertical_flip & (rng.random(n) < 0.5), -1.0, 1.0)

    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    shear_m = np.stack([np.stack([np.ones(n), shear], -1), np.stack([np.zeros(n), np.ones(n)], -1)], -2)
    scale = np.stack([np.stack([zoom_x * flip_x, np.zeros(n)], -1), np.stack([np.zeros(n), zoom_y * flip_y], -1)], -2)
    linear = rotation @ shear_m @ scale
    matrices = np.tile(np.eye(3), (n, 1, 1))
    matrices[:, :2, :2] = linear
    matrices[:, 0, 2], matrices[:, 1, 2] = shift_x, shift_y
    return matrices


def sample(n: int, spec: AugmentSpec, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw per-image transforms: ``theta`` (n, 2, 3) and brightness factors (n,)."""
    # Crop first (select a region of the original), then the geometric jitter of that region.
    combined = _crop_matrices(n, spec, rng) @ _affine_matrices(n, spec, rng)
    brightness = rng.uniform(*spec.brightness, size=n)
    return combined[:, :2, :].astype(np.float32), brightness.astype(np.float32)


def theta_to_pixel_projective(theta: np.ndarray, height: int, width: int) -> np.ndarray:
    """Convert normalised ``theta`` to TF's 8-parameter pixel-space transforms (output -> input)."""
    # normalised n = (2 / size) * pixel + (1 / size - 1), pixel centres at integer coordinates
    to_norm = np.array([[2 / width, 0, 1 / width - 1], [0, 2 / height, 1 / height - 1], [0, 0, 1]])
    to_pixel = np.linalg.inv(to_norm)
    full = np.tile(np.eye(3), (len(theta), 1, 1))
    full[:, :2, :] = theta
    pixel = to_pixel @ full @ to_norm
    return pixel.reshape(len(theta), 9)[:, :8].astype(np.float32)
