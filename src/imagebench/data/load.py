"""Dataset → decoded uint8 arrays → seeded stratified splits → TrialData.

The user's files are only ever opened for reading.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split

from imagebench.data.arrays import Split, TrialData
from imagebench.data.cache import CACHE_VERSION, cache_root, cached_arrays, decode_cached, entry_key
from imagebench.data.folders import (
    BUILTIN_DATASETS,
    DatasetError,
    ImageList,
    find_split_folders,
    folder_fingerprint,
    resolve_dataset_path,
    scan_class_folders,
)
from imagebench.core.params import TrialParams

MIN_CLASSES = 2


# --- decoding
def _open_image(path: Path) -> Image.Image:
    """Image.open without Pillow's decompression-bomb refusal for JPEGs, which ``draft`` decodes
    at 1/2..1/8 scale (a 12000x9000 photo costs ~20 MB, not 324 MB); other formats keep the check."""
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = None
        try:
            image = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    pixels = image.width * image.height
    if image.format != "JPEG" and limit and pixels > 2 * limit:
        image.close()
        raise ValueError(f"{image.width}x{image.height} pixels is too large to decode safely (over {2 * limit:,}); "
                         "downscale the file or save it as JPEG")  # fmt: skip
    return image


def decode_image(path: Path, size: int) -> np.ndarray:
    """Read any Pillow-readable image as (size, size, 3) uint8 RGB, EXIF rotation applied."""
    with _open_image(path) as image:
        image.draft("RGB", (size, size))  # JPEG: decode at reduced scale, so huge photos stay cheap
        image = ImageOps.exif_transpose(image)
        if image.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit greyscale: 0..65535 scaled to 0..255 (convert() would clip at 255; stretching by
            # the image's own maximum would turn a dark image white)
            array = np.clip(np.asarray(image, dtype=np.float64), 0, 65535) / 257.0
            image = Image.fromarray(np.rint(array).astype(np.uint8))
        if image.mode in ("RGBA", "LA", "P", "PA"):
            image = image.convert("RGBA")
            background = Image.new("RGBA", image.size, (255, 255, 255, 255))
            image = Image.alpha_composite(background, image)  # transparency becomes white, not black
        image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8)


def decode_all(files: list[Path], size: int) -> tuple[np.ndarray, list[int], list[str]]:
    """Decode every file; unreadable ones are skipped and returned by name, never fatal."""
    from tqdm.auto import tqdm

    images, kept, skipped = [], [], []
    # a bar in a terminal (a sweep's data check, check-data); nothing in notebooks' logs
    for index, path in enumerate(tqdm(files, desc=f"decoding at {size} px", unit="img", disable=None, leave=False)):
        try:
            images.append(decode_image(path, size))
            kept.append(index)
        except (OSError, ValueError, SyntaxError) as exc:
            skipped.append(f"{path}: {exc}")
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image(s), first: {skipped[0]}", stacklevel=2)
    stacked = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
    return stacked, kept, skipped


# --- built-in data
def load_digits_images(size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """scikit-learn's 8x8 digits (shipped with scikit-learn), upscaled to RGB ``size`` px."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images / 16.0 * 255).astype(np.uint8)
    resized = np.stack([np.asarray(Image.fromarray(p).resize((size, size), Image.Resampling.BILINEAR)) for p in pixels])
    rgb = np.repeat(resized[..., None], 3, axis=-1)
    return rgb, digits.target.astype(np.int64), [str(name) for name in digits.target_names]


# --- splitting
def cap_per_class(labels: np.ndarray, max_per_class: int | None, seed: int) -> np.ndarray:
    """Indices keeping at most ``max_per_class`` of each class, chosen reproducibly."""
    indices = np.arange(len(labels))
    if max_per_class is None:
        return indices
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(indices[labels == c])[:max_per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep))


def stratified_split(labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int,
                     class_names: Optional[list[str]] = None) -> dict[str, np.ndarray]:  # fmt: skip
    indices = np.arange(len(labels))
    try:
        rest, test = train_test_split(indices, test_size=test_fraction, stratify=labels, random_state=seed)
        train, val = train_test_split(
            rest, test_size=val_fraction / (1 - test_fraction), stratify=labels[rest], random_state=seed
        )
    except ValueError as exc:
        raise DatasetError(_split_problem(labels, val_fraction, test_fraction, class_names, exc)) from None
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}


def _split_problem(labels, val_fraction, test_fraction, class_names, exc) -> str:
    """Which classes are too small to split, by name (never by index alone)."""
    counts = np.bincount(labels)
    named = lambda index: f"'{class_names[index]}'" if class_names else f"index {index}"  # noqa: E731
    # stratified train/val/test needs at least 2 per class at each cut: fewer than 3 cannot work
    small = [index for index in np.argsort(counts, kind="stable") if counts[index] < 3] or [int(np.argmin(counts))]
    listed = ", ".join(f"{named(index)} has {counts[index]} image(s)" for index in small[:10])
    return (f"cannot split the classes stratified into train/val/test (val_fraction {val_fraction}, test_fraction "
            f"{test_fraction}): {listed}. Add images to these classes, remove them, or lower the fractions "
            f"(scikit-learn: {exc})")  # fmt: skip


def _subset(images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> Split:
    return Split(images=images[indices], labels=labels[indices])


# --- the two kinds of dataset
def _builtin_images(dataset: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The built-in set at ``size`` px, upscaled once per size into the decode cache (every trial of a
    sweep starts by loading it: reading the cache is ~10x faster than resizing 1,797 images)."""
    root = cache_root()
    if root is None:
        return load_digits_images(size)

    def compute():
        images, labels, class_names = load_digits_images(size)
        return {"images": images, "labels": labels}, {"class_names": class_names}

    folder = root / entry_key(dataset_fingerprint(dataset), size)
    arrays, meta, _hit = cached_arrays(folder, ("images", "labels"), {"version": CACHE_VERSION, "builtin": dataset}, compute)
    return arrays["images"], np.asarray(arrays["labels"]), meta["class_names"]


def _load_builtin(params: TrialParams) -> TrialData:
    images, labels, class_names = _builtin_images(params.dataset, params.image_size)
    kept = cap_per_class(labels, params.max_per_class, params.seed)
    images, labels = images[kept], labels[kept]
    splits = stratified_split(labels, params.val_fraction, params.test_fraction, params.seed, class_names)
    parts = {name: _subset(images, labels, idx) for name, idx in splits.items()}
    return TrialData(class_names=class_names, fingerprint=dataset_fingerprint(params.dataset), source=params.dataset, **parts)


def _decode_split(listing: ImageList, class_names: list[str], size: int, root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode a split's files once per size (data.cache), then label them by class index."""
    index_of = {name: i for i, name in enumerate(class_names)}
    decoded = decode_cached(listing.files, folder_fingerprint(listing.files, root), size, decode_all)
    labels = np.array([index_of[listing.labels[i]] for i in decoded.kept], dtype=np.int64)
    return decoded.images, labels, decoded.skipped


def layout_problems(root: Path) -> tuple[dict[str, ImageList], list[str], list[str]]:
    """Listings (``{"all": ...}`` or per split), class names, and every layout problem found, each a
    sentence naming the folder or class and what to do. Nothing is decoded."""
    folders = find_split_folders(root) or {"all": root}
    listings = {split: scan_class_folders(folder) for split, folder in folders.items()}
    main = "train" if "train" in listings else "all"
    class_names = sorted(set(listings[main].labels))
    problems = [f"class folder with no images: {path}; add images or remove the folder"
                for listing in listings.values() for path in listing.empty_folders]  # fmt: skip
    if len(class_names) < MIN_CLASSES:
        problems.append(f"{folders[main]}: found {len(class_names)} class folder(s) {class_names}; need at least {MIN_CLASSES}")
    for split, listing in listings.items():
        extra = sorted(set(listing.labels) - set(class_names))
        if extra:
            problems.append(f"{folders[split]}: classes {extra} are not in {folders[main]}; add them there or remove them")
        absent = sorted(set(class_names) - set(listing.labels))
        if absent:  # a test or validation score over fewer classes would not mean what it says
            problems.append(f"{folders[split]}: classes {absent} of {folders[main]} have no images here; "
                            f"add some, or remove the {split}/ folder to carve {split} from train")
    return listings, class_names, problems


def discover(root: Path) -> tuple[dict[str, ImageList], list[str]]:
    """The listings and class names of a folder dataset, every layout problem raised at once.

    Nothing is decoded: the sweep calls this once per dataset when it plans (through
    ``dataset_fingerprint``), so a bad folder stops it before trial 1.
    """
    listings, class_names, problems = layout_problems(root)
    if problems:
        raise DatasetError("\n".join(problems))
    return listings, class_names


@dataclass
class DecodedFolder:
    """A folder dataset decoded at one size, before any trial's subsampling and splits: what
    ``--ship-data`` sends to nodes without the folder (``data.shipping``)."""

    source: str  # the folder, as the trials name it
    size: int
    fingerprint: str  # ``dataset_fingerprint`` of the folder
    class_names: list[str]
    parts: dict[str, Split]  # "all", or the folder's own splits ("train", and "val"/"test" where present)
    skipped_files: list[str] = field(default_factory=list)


def decode_folder(root: Path, size: int) -> DecodedFolder:
    """Discover and decode (through the decode cache) a folder dataset at ``size`` px."""
    listings, class_names = discover(root)
    decoded = {split: _decode_split(listing, class_names, size, root) for split, listing in listings.items()}
    all_files = [f for listing in listings.values() for f in listing.files]
    return DecodedFolder(str(root), size, folder_fingerprint(all_files, root), class_names,
                         {split: Split(images=d[0], labels=d[1]) for split, d in decoded.items()}, [s for d in decoded.values() for s in d[2]])  # fmt: skip


def folder_trial_data(folder: DecodedFolder, params: TrialParams) -> TrialData:
    """The trial's splits of a decoded folder: one folder of classes is subsampled and split, a
    folder with its own splits keeps them (a missing val or test is carved from train)."""
    if "all" in folder.parts:
        whole = folder.parts["all"]
        kept = cap_per_class(whole.labels, params.max_per_class, params.seed)
        images, labels = whole.images[kept], whole.labels[kept]
        splits = stratified_split(labels, params.val_fraction, params.test_fraction, params.seed, folder.class_names)
        parts = {name: _subset(images, labels, idx) for name, idx in splits.items()}
    else:
        parts = dict(folder.parts)
        if "val" not in parts or "test" not in parts:
            parts = _split_missing(parts, params, folder.class_names)
    return TrialData(class_names=folder.class_names, fingerprint=folder.fingerprint, source=folder.source,
                     skipped_files=folder.skipped_files, **parts)  # fmt: skip


def _split_missing(parts: dict[str, Split], params: TrialParams, class_names: list[str]) -> dict[str, Split]:
    """A dataset with only train/ (and maybe one of val/test): carve the missing split(s) from train."""
    train = parts["train"]
    missing = [name for name in ("val", "test") if name not in parts]
    fraction = params.val_fraction if missing == ["val"] else params.test_fraction
    if len(missing) == 1:
        keep, carved = train_test_split(
            np.arange(len(train)), test_size=fraction, stratify=train.labels, random_state=params.seed
        )
        return {**parts, "train": _subset(train.images, train.labels, keep), missing[0]: _subset(train.images, train.labels, carved)}
    splits = stratified_split(train.labels, params.val_fraction, params.test_fraction, params.seed, class_names)
    return {name: _subset(train.images, train.labels, idx) for name, idx in splits.items()}


def dataset_fingerprint(dataset: str) -> str:
    """Cheap content identity (no decoding): used by sweep planning and resume."""
    if dataset in BUILTIN_DATASETS:
        import sklearn

        return f"{dataset}-sklearn{sklearn.__version__}"
    root = resolve_dataset_path(dataset)
    listings, _class_names = discover(root)
    return folder_fingerprint([f for listing in listings.values() for f in listing.files], root)


def load_trial_data(params: TrialParams) -> TrialData:
    """The trial's data: built in, shipped to this node with the job (``--ship-data``), or its folder."""
    if params.dataset in BUILTIN_DATASETS:
        return _load_builtin(params)
    from imagebench.data import shipping

    shipped = shipping.shipped_for(params.dataset, params.image_size)
    if shipped is not None:
        return folder_trial_data(shipped, params)
    return folder_trial_data(decode_folder(resolve_dataset_path(params.dataset), params.image_size), params)
