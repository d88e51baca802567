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

The caches do not grow without bound: after each new entry, the least recently used entries (by
their meta.json's time, renewed on every read) are removed until all fit in
``$IMAGEBENCH_CACHE_MAX_GB`` (default 20 GB); ``imagebench cache`` shows and clears them.
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

from imagebench.core.contract import ENV_CACHE, ENV_CACHE_MAX_GB  # cache root ("off" disables it), its size limit

CACHE_VERSION = 2  # bump whenever decoding changes (resampling, colour handling, EXIF, 16-bit scaling)


@dataclass
class DecodedImages:
    images: np.ndarray  # (N, S, S, 3) uint8, read-only when it comes from the cache
    kept: list[int]  # index into the file list of each decoded image
    skipped: list[str]  # "path: reason" of each file that could not be decoded
    from_cache: bool = False


Decoder = Callable[[list[Path], int], tuple[np.ndarray, list[int], list[str]]]


KINDS = ("decoded", "features", "shipped")  # <cache base>/<kind>/<entry key>/ (shipped: data.shipping)


def cache_base() -> Optional[Path]:
    """The folder holding every kind of entry: ``$IMAGEBENCH_CACHE``, else the project's ``.cache``; None when off."""
    setting = os.environ.get(ENV_CACHE, "").strip()
    if setting.lower() == "off":
        return None
    if setting:
        return Path(setting).expanduser()
    from imagebench.store import project_root

    return project_root() / ".cache"


def cache_root(kind: str = "decoded") -> Optional[Path]:
    """Where entries of ``kind`` ("decoded", "features") live; None when caching is off."""
    base = cache_base()
    return None if base is None else base / kind


# ---- the size limit: least recently used entries go first ---------------------------------------

DEFAULT_LIMIT_GB = 20.0


def cache_limit_bytes() -> int:
    """``$IMAGEBENCH_CACHE_MAX_GB`` (default 20) in bytes; a value that is no number > 0 is named once and ignored."""
    text = os.environ.get(ENV_CACHE_MAX_GB, "").strip()
    try:
        gigabytes = float(text) if text else DEFAULT_LIMIT_GB
        if not gigabytes > 0:
            raise ValueError(text)
    except ValueError:
        warnings.warn(f"{ENV_CACHE_MAX_GB}={text!r} is not a size in GB > 0; using {DEFAULT_LIMIT_GB:g}", stacklevel=2)
        gigabytes = DEFAULT_LIMIT_GB
    return int(gigabytes * 1024**3)


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int  # bytes
    last_used: float  # when it was last written or read (its meta.json's time)


def folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def cache_entries(base: Path) -> list[CacheEntry]:
    """The complete entries under ``base``, least recently used first (an entry being staged is not one yet)."""
    found = []
    for kind in KINDS:
        for folder in (base / kind).glob("[!.]*"):
            try:
                found.append(CacheEntry(folder, folder_size(folder), (folder / "meta.json").stat().st_mtime))
            except OSError:
                continue  # incomplete, or removed meanwhile
    return sorted(found, key=lambda entry: entry.last_used)


def mark_used(folder: Path) -> None:
    try:
        os.utime(folder / "meta.json")
    except OSError:
        pass


def evict(base: Path, limit: int, keep: Optional[Path] = None) -> list[CacheEntry]:
    """Remove the least recently used entries until the rest fit in ``limit`` bytes; never ``keep`` (the
    entry just written). A trial reading a removed entry keeps its memory map (the data stays until it closes)."""
    entries = cache_entries(base)
    total, removed = sum(entry.size for entry in entries), []
    for entry in entries:
        if total <= limit:
            break
        if keep is not None and entry.path == keep:
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        total -= entry.size
        removed.append(entry)
    return removed


def clear(base: Path) -> list[CacheEntry]:
    """Remove every entry under ``base`` (each is decoded again when a trial needs it)."""
    entries = cache_entries(base)
    for entry in entries:
        shutil.rmtree(entry.path, ignore_errors=True)
    return entries


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


def read_arrays(folder: Path, names: tuple[str, ...], expected: dict,
                files: tuple[str, ...] = ()) -> Optional[tuple[dict[str, np.ndarray], dict]]:  # fmt: skip
    """The arrays of a complete, undamaged entry whose meta.json holds ``expected`` (and which has
    the other ``files``); else None (a damaged entry is removed so that it is rebuilt)."""
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        paths = {name: folder / f"{name}.npy" for name in names}
        valid = all(meta.get(key) == value for key, value in expected.items()) and all(
            _expected_bytes(path) == path.stat().st_size for path in paths.values()
        ) and all((folder / name).is_file() for name in files)
        if valid:
            mark_used(folder)
            return {name: np.load(path, mmap_mode="r") for name, path in paths.items()}, meta
    except (OSError, ValueError, KeyError):
        pass
    if folder.exists():
        warnings.warn(f"cache entry {folder} is incomplete or damaged; computing it again", stacklevel=3)
        shutil.rmtree(folder, ignore_errors=True)
    return None


FileWriters = dict[str, Callable[[Path], None]]  # an entry's other files: name -> writes it at the given path


def write_arrays(folder: Path, arrays: dict[str, np.ndarray], meta: dict, files: Optional[FileWriters] = None) -> None:
    """Stage the entry privately, meta.json last, then rename it into place (first writer wins)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.{os.getpid()}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        for name, array in arrays.items():
            np.save(staging / f"{name}.npy", np.ascontiguousarray(array))
        for name, write in (files or {}).items():
            write(staging / name)
        (staging / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        os.rename(staging, folder)
        evict(folder.parent.parent, cache_limit_bytes(), keep=folder)  # <base>/<kind>/<key>
    except OSError:
        # Another worker renamed its copy first (the entry now exists), or the disk is full: either
        # way ours is not needed; a full disk is reported and the trial goes on without the cache.
        shutil.rmtree(staging, ignore_errors=True)
        if not folder.exists():
            raise


def cached_arrays(folder: Path, names: tuple[str, ...], meta: dict, compute: Callable[[], tuple[dict[str, np.ndarray], dict]],
                  files: Optional[FileWriters] = None):  # fmt: skip
    """``compute()``'s arrays and notes, and whether they were already cached.

    ``compute`` returns (arrays, notes): notes are small JSON values measured with the arrays
    (e.g. a latency), stored in meta.json beside ``meta``. Read from ``folder`` when a valid entry
    exists there, else computed, stored, and read back memory-mapped. ``files`` are the entry's other
    files, written after ``compute`` before the entry is complete; an entry without one is rebuilt.
    """
    found = read_arrays(folder, names, meta, tuple(files or ()))
    if found is not None:
        return found[0], found[1], True
    arrays, notes = compute()
    stored_meta = {**notes, **meta}
    try:
        write_arrays(folder, arrays, stored_meta, files)
    except OSError as exc:
        warnings.warn(f"could not write the cache entry {folder} ({exc}); continuing without it", stacklevel=2)
        return arrays, stored_meta, False
    found = read_arrays(folder, names, meta, tuple(files or ()))
    return (found[0], found[1], False) if found is not None else (arrays, stored_meta, False)


def _read_entry(folder: Path, files: int, size: int) -> Optional[DecodedImages]:
    found = read_arrays(folder, ("images",), {"version": CACHE_VERSION, "files": files})
    if found is None:
        return None
    arrays, meta = found
    images = arrays["images"]
    if images.shape != (len(meta["kept"]), size, size, 3) or images.dtype != np.uint8:
        shutil.rmtree(folder, ignore_errors=True)
        return None
    return DecodedImages(images, meta["kept"], meta["skipped"], from_cache=True)


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
    meta = {"version": CACHE_VERSION, "files": len(files), "kept": decoded.kept, "skipped": decoded.skipped}
    try:
        write_arrays(folder, {"images": decoded.images.astype(np.uint8, copy=False)}, meta)
    except OSError as exc:
        warnings.warn(f"could not write the decode cache at {folder} ({exc}); continuing without it", stacklevel=2)
        return decoded
    return _read_entry(folder, len(files), size) or decoded
