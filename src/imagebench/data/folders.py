"""Find images in a folder of class folders, pre-split or not, without ever writing to it.

Class names are Unicode-NFC normalised and sorted, so a Korean class name typed on macOS (NFD)
and on Linux (NFC) is one class, and the label order never depends on ``os.listdir`` order
(docs/lessons.md, failure 2).
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

BUILTIN_DATASETS = ("digits",)  # shipped inside scikit-learn, so the demo needs no download
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Never classes and never images, whatever their extension (OS and Jupyter droppings).
IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini", "__macosx", ".ipynb_checkpoints"})
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation", "valid"), "test": ("test",)}


class DatasetError(ValueError):
    """The dataset cannot be used as it is; the message says which folder/class and what to do."""


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_NAMES


def is_image_file(path: Path) -> bool:
    return path.is_file() and not is_hidden(path.name) and path.suffix.lower() in IMAGE_EXTENSIONS


@dataclass
class ImageList:
    files: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # NFC class names
    empty_folders: list[Path] = field(default_factory=list)  # class folders without a single image

    def extend(self, files: list[Path], label: str) -> None:
        self.files.extend(files)
        self.labels.extend([label] * len(files))


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((entry for entry in folder.iterdir() if entry.is_dir() and not is_hidden(entry.name)), key=lambda p: nfc(p.name))


def _images_under(folder: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not is_hidden(d))
        found.extend(Path(root) / name for name in sorted(files) if is_image_file(Path(root) / name))
    return found


def scan_class_folders(folder: Path) -> ImageList:
    """Images of each class folder (searched recursively); NFC/NFD twins merge into one class.

    Class folders without a single image are listed in ``empty_folders`` (the loader refuses them:
    silently dropping one would shift the class indices and hide a copy that went wrong).
    """
    images, empty = ImageList(), []
    for class_dir in _visible_dirs(folder):
        files = _images_under(class_dir)
        if not files:
            empty.append(class_dir)
        images.extend(files, nfc(class_dir.name))
    merged_twins = {nfc(path.name) for path in empty} & set(images.labels)  # the other spelling has images
    images.empty_folders = [path for path in empty if nfc(path.name) not in merged_twins]
    return images


def find_split_folders(root: Path) -> dict[str, Path]:
    """``{'train': ..., 'val': ..., 'test': ...}`` when the dataset is pre-split, else {}."""
    children = {entry.name.lower(): entry for entry in _visible_dirs(root)}
    found = {split: children[name] for split, names in SPLIT_FOLDERS.items() for name in names if name in children}
    if not found:
        return {}
    if "train" not in found:
        raise DatasetError(f"{root}: has {', '.join(sorted(found))} folders but no train/ folder; add train/ or remove the split folders")
    return found


def resolve_dataset_path(dataset: str) -> Path:
    path = Path(dataset).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset '{dataset}' is neither a built-in name nor an existing folder (looked at {path.resolve()})")
    if not path.is_dir():
        raise DatasetError(f"dataset '{dataset}' is a file; point it at a folder of class folders")
    return path.resolve()


def folder_fingerprint(files: list[Path], root: Path) -> str:
    """Hash of relative paths, sizes and modification times: changes when any image changes."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: nfc(str(p.relative_to(root)))):
        stat = path.stat()
        digest.update(f"{nfc(str(path.relative_to(root)))}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "folder-" + digest.hexdigest()[:16]
