"""Benchmark 1, input pipeline: training images/second of one epoch of the plain CNN with the
product project's augmentation, ours vs the earlier projects' way.

- keras baseline: legacy ``ImageDataGenerator(...).flow_from_directory`` over JPEG files + ``fit``
  (decodes and augments every image with PIL/SciPy each epoch, one image at a time);
- torch baseline: torchvision ``ImageFolder`` + PIL transforms + ``DataLoader(num_workers=2)``;
- ours: the same model from the registry trained by ``backend.fit`` on the decode cache (decoded
  once), with ``seed000`` augmentation drawn per batch and applied as one batched warp. Our epoch
  also includes a validation pass, the baselines' does not: the comparison is conservative.

    python benchmarks/input_pipeline.py --framework keras|torch [--repeats 3] [--size 64]

The data: scikit-learn's digits written once as JPEG files of ``--source-size`` px (default 2000:
the earlier projects trained on phone photos and product shots, decoded and resized again every
epoch; ``--source-size 480`` shows a small-file dataset) in class folders pre-split 70/15/15, in a
temporary folder, so every pipeline reads the same files and trains at ``--size`` px. Ours pays the
decoding once, when the first trial builds the decode cache (its time is printed, not counted in an
epoch: every later epoch and trial reads the cache).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_record  # noqa: E402

BATCH = 32


def write_jpeg_tree(root: Path, size: int) -> Path:
    """digits → JPEG files of ``size`` px in train/val/test class folders (stratified 70/15/15)."""
    from PIL import Image

    from imagebench.data.load import load_digits_images, stratified_split

    images, labels, names = load_digits_images(32)  # upscaled one file at a time: 1,797 photos at once would not fit
    for split, indices in stratified_split(labels, 0.15, 0.15, seed=0).items():
        for index in indices:
            folder = root / split / names[labels[index]]
            folder.mkdir(parents=True, exist_ok=True)
            photo = Image.fromarray(images[index]).resize((size, size), Image.Resampling.BILINEAR)
            photo.save(folder / f"{index}.jpg", quality=90)
    return root


def our_params(root: Path, framework: str, size: int):
    from imagebench.core.params import make_params

    return make_params(framework=framework, model="cnn", dataset=str(root), image_size=size, augment="seed000",
                       epochs=1, batch_size=BATCH, early_stopping_patience=0)


def ours(root: Path, framework: str, size: int, repeats: int) -> tuple[list[float], int, float]:
    from imagebench.backends import get_backend
    from imagebench.data.load import load_trial_data
    from imagebench.training.monitor import EpochMonitor

    params = our_params(root, framework, size)
    backend = get_backend(framework)
    backend.configure(params)
    decode_seconds = timed(lambda: load_trial_data(params))  # builds the decode cache once, as a sweep's first trial does
    print(f"decode cache built once in {decode_seconds:.1f} s (all splits)")
    rates = []
    for attempt in range(repeats + 1):
        data = load_trial_data(params)  # a trial's own start: read from the cache
        model = backend.build_model(params, data.num_classes)
        seconds = timed(lambda: backend.fit(model, params, data, EpochMonitor(params)))
        if attempt:  # the first builds graphs / warms caches
            rates.append(len(data.train) / seconds)
    return rates, len(data.train), decode_seconds


def keras_baseline(root: Path, size: int, repeats: int) -> list[float]:
    import tensorflow as tf

    from imagebench.backends import get_backend
    from imagebench.backends.keras_training import compile_model

    params = our_params(root, "keras", size)
    backend = get_backend("keras")
    backend.configure(params)
    generator = tf.keras.preprocessing.image.ImageDataGenerator(
        rotation_range=20, width_shift_range=0.3, height_shift_range=0.3, shear_range=0.3, zoom_range=[0.8, 1.2],
        horizontal_flip=True,
    )  # the model rescales itself, as ours does
    flow = generator.flow_from_directory(str(root / "train"), target_size=(size, size), batch_size=BATCH, class_mode="sparse")
    model = backend.build_model(params, flow.num_classes)
    compile_model(model, params)
    rates = []
    for attempt in range(repeats + 1):
        seconds = timed(lambda: model.fit(flow, epochs=1, verbose=0))
        if attempt:
            rates.append(flow.samples / seconds)
    return rates


def torch_baseline(root: Path, size: int, repeats: int) -> list[float]:
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    from imagebench.backends import get_backend
    from imagebench.backends.torch_training import make_optimizer

    params = our_params(root, "torch", size)
    backend = get_backend("torch")
    backend.configure(params)
    transform = transforms.Compose([
        transforms.RandomResizedCrop(size, scale=(0.6, 1.0)),
        transforms.RandomAffine(degrees=20, translate=(0.3, 0.3), scale=(0.8, 1.2), shear=17),
        transforms.RandomHorizontalFlip(),
        transforms.PILToTensor(),
    ])  # fmt: skip
    folder = datasets.ImageFolder(str(root / "train"), transform=transform)
    loader = torch.utils.data.DataLoader(folder, batch_size=BATCH, shuffle=True, num_workers=2, persistent_workers=False)
    model = backend.build_model(params, len(folder.classes))
    optimizer = make_optimizer(params, model)

    def epoch() -> None:
        model.train()
        for images, labels in loader:
            pixels = images.permute(0, 2, 3, 1).float()  # the registry's models take NHWC 0-255 pixels
            loss = F.cross_entropy(model(pixels), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    rates = []
    for attempt in range(repeats + 1):
        seconds = timed(epoch)
        if attempt:
            rates.append(len(folder) / seconds)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("keras", "torch"), required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="training image size")
    parser.add_argument("--source-size", type=int, default=2000,
                        help="pixel size of the JPEG files (default 2000: a phone photo, already scaled down from 3000-4000 px)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagebench-bench-") as temp:
        os.environ.setdefault("IMAGEBENCH_CACHE", str(Path(temp) / "cache"))
        root = write_jpeg_tree(Path(temp) / "digits-jpeg", args.source_size)
        baseline = (keras_baseline if args.framework == "keras" else torch_baseline)(root, args.size, args.repeats)
        mine, train_images, decode_seconds = ours(root, args.framework, args.size, args.repeats)
    packages = ["tensorflow-cpu", "tensorflow", "keras", "scipy", "pillow"] if args.framework == "keras" else ["torch", "torchvision", "pillow"]
    write_record(
        f"input_pipeline_{args.framework}", np.asarray(baseline).tolist(), np.asarray(mine).tolist(), "images/s",
        ">= 5x", higher_is_better=True, packages=packages,
        notes=f"plain cnn trained at {args.size} px, batch {BATCH}, {train_images} training images (digits as "
              f"{args.source_size} px JPEG files), seed000 augmentation; ours includes a validation pass per epoch; "
              f"ours decoded the dataset once beforehand in {decode_seconds:.1f} s (not in the epoch figure)",
    )


if __name__ == "__main__":
    main()
