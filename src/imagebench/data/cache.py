"""Decode once: a folder's images decoded and resized once per image size, shared by every trial.

The cache entry of a file list is a folder ``<cache root>/<key>/`` with ``images.npy`` (uint8
N x S x S x 3, opened memory-mapped, so parallel trials share the page cache instead of each
holding a copy) and ``meta.json`` (which files decoded, which were skipped and why). The key is the
list's fingerprint (relative paths, sizes, mtimes: a changed, added or removed file gives a new
key) plus the size and the decoder version; both frameworks read the same entry.

Writers build an entry in a private temporary folder and rename it into place (atomic on one file
system): several workers may build the same entry at once, the first rename wins and the others
discard theirs. ``meta.json`` is written last and checked on every read with the array's size, so a
half-written or damaged entry is never used: it is removed and decoded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

CACHE_VERSION = 1  # bump whenever decoding changes (resampling, colour handling, EXIF, 16-bit scaling)
ENV_CACHE = "IMAGEBENCH_CACHE"  # cache root; "off" disables the cache


@dataclass
class DecodedImages:
    images: np.ndarray  # (N, S, S, 3) uint8, read-only when it comes from the cache
    kept: list[int]  # index into the file list of each decoded image
    skipped: list[str]  # "path: reason" of each file that could not be decoded
    from_cache: bool = False


Decoder = Callable[[list[Path], int], tuple[np.ndarray, list[int], list[str]]]


def cache_root() -> Optional[Path]:
    setting = os.environ.get(ENV_CACHE, "").strip()
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    from imagebench.tracking import project_root

    return project_root() / ".cache" / "decoded"


def entry_key(fingerprint: str, size: int) -> str:
    return hashlib.sha256(f"v{CACHE_VERSION}|{fingerprint}|{size}".encode()).hexdigest()[:24]


def _expected_bytes(path: Path) -> Optional[int]:
    """Size the .npy file must have according to its own header (None if the header is unreadable)."""
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read_header(handle)
            return handle.tell() + int(np.prod(shape)) * dtype.itemsize
    except (OSError, ValueError):
        return None


def _read_entry(folder: Path, files: int, size: int) -> Optional[DecodedImages]:
    meta_path, images_path = folder / "meta.json", folder / "images.npy"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        valid = (
            meta.get("version") == CACHE_VERSION and meta.get("files") == files
            and _expected_bytes(images_path) == images_path.stat().st_size
        )  # fmt: skip
        if valid:
            images = np.load(images_path, mmap_mode="r")
            if images.shape == (len(meta["kept"]), size, size, 3) and images.dtype == np.uint8:
                return DecodedImages(images, meta["kept"], meta["skipped"], from_cache=True)
    except (OSError, ValueError, KeyError):
        pass
    if folder.exists():
        warnings.warn(f"decode cache entry {folder} is incomplete or damaged; decoding again", stacklevel=3)
        shutil.rmtree(folder, ignore_errors=True)
    return None


def _write_entry(folder: Path, decoded: DecodedImages, files: int) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        np.save(staging / "images.npy", np.ascontiguousarray(decoded.images, dtype=np.uint8))
        meta = {"version": CACHE_VERSION, "files": files, "kept": decoded.kept, "skipped": decoded.skipped}
        (staging / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        os.rename(staging, folder)
    except OSError:
        # Another worker renamed its copy first (the entry now exists), or the disk is full: either
        # way ours is not needed; a full disk is reported and the trial goes on without the cache.
        shutil.rmtree(staging, ignore_errors=True)
        if not folder.exists():
            raise


def decode_cached(files: list[Path], fingerprint: str, size: int, decode: Decoder) -> DecodedImages:
    """The decoded images of ``files`` at ``size`` px: from the cache, or decoded now and cached."""
    root = cache_root()
    if root is None:
        return DecodedImages(*decode(files, size))
    folder = root / entry_key(fingerprint, size)
    cached = _read_entry(folder, len(files), size)
    if cached is not None:
        return cached
    decoded = DecodedImages(*decode(files, size))
    try:
        _write_entry(folder, decoded, len(files))
    except OSError as exc:
        warnings.warn(f"could not write the decode cache at {folder} ({exc}); continuing without it", stacklevel=2)
        return decoded
    return _read_entry(folder, len(files), size) or decoded
