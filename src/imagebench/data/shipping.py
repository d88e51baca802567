"""``--ship-data``: a folder dataset decoded once on the machine that typed ``imagebench sweep`` and
sent to the Ray nodes, so no shared filesystem is needed.

A package is the folder decoded at one image size (``load.DecodedFolder``: the uint8 images per
part, labels, class names, skipped files, the folder's fingerprint), as one compressed ``.npz``.
The sweep puts it once in Ray's object store; a node fetches it the first time one of its trials
needs it, checks its digest (and the fingerprint against the trial's plan), and unpacks it into
its cache (``<cache>/shipped/<digest>/``, arrays every later trial on the node maps from disk;
``$IMAGEBENCH_SHIPPED_DATA`` names it for the trial). The trial then splits it exactly as it would
split the folder: same fingerprint, same splits.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from imagebench.core.contract import ENV_SHIPPED_DATA
from imagebench.data import cache
from imagebench.data.arrays import Split
from imagebench.data.folders import DatasetError

SHIPPED_DIR = "shipped"  # <node cache>/shipped/<digest>/: one of the cache's kinds (counted, limited, cleared with it)


@dataclass(frozen=True)
class Package:
    """A packed dataset as it travels: its bytes and what the receiver checks them against."""

    data: bytes
    digest: str  # of ``data``: a package damaged on the way is refused
    fingerprint: str  # the folder's dataset fingerprint (the trials' record names it)
    source: str
    size: int


def digest_of(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def pack(folder, dataset: str) -> Package:
    """``folder``: a ``load.DecodedFolder``; ``dataset``: the folder as the trials' parameters name it."""
    arrays = {}
    for name, part in folder.parts.items():
        arrays[f"{name}.images"], arrays[f"{name}.labels"] = np.asarray(part.images), np.asarray(part.labels)
    meta = {"dataset": dataset, "source": folder.source, "size": folder.size, "fingerprint": folder.fingerprint, "class_names": folder.class_names,
            "skipped_files": folder.skipped_files, "parts": list(folder.parts)}  # fmt: skip
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.array(json.dumps(meta, ensure_ascii=False)), **arrays)
    data = buffer.getvalue()
    return Package(data, digest_of(data), folder.fingerprint, folder.source, folder.size)


def pack_folder(dataset: str, size: int) -> Package:
    from imagebench.data.folders import resolve_dataset_path
    from imagebench.data.load import decode_folder

    return pack(decode_folder(resolve_dataset_path(dataset), size), dataset)


def _part_names(parts: list[str]) -> tuple[str, ...]:
    return tuple(f"{name}.{array}" for name in parts for array in ("images", "labels"))


def receive(package: Package, base: Path) -> tuple[Path, bool]:
    """The package unpacked into ``base`` (the node's cache) once, after its digest is checked: a
    folder of uncompressed arrays every trial on the node maps from disk without decompressing;
    (the folder, whether it was written now). Parallel trials write it once (``cache.write_arrays``)."""
    folder = base / SHIPPED_DIR / package.digest
    if (folder / "meta.json").is_file():
        return folder, False
    if digest_of(package.data) != package.digest:
        raise DatasetError(f"the shipped copy of {package.source} arrived damaged (digest differs); run the sweep again")
    with np.load(io.BytesIO(package.data), allow_pickle=False) as packed:
        meta = json.loads(str(packed["meta"]))
        arrays = {name: packed[name] for name in _part_names(meta["parts"])}
    cache.write_arrays(folder, arrays, {**meta, "digest": package.digest})
    return folder, True


def unpack(folder: Path):
    """(the dataset as the trials name it, the ``load.DecodedFolder``) of a received package."""
    from imagebench.data.load import DecodedFolder

    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    found = cache.read_arrays(folder, _part_names(meta["parts"]), {"digest": meta["digest"]})
    if found is None:
        raise DatasetError(f"the shipped dataset at {folder} is incomplete; run the sweep again (it is shipped again)")
    arrays = found[0]
    parts = {name: Split(images=arrays[f"{name}.images"], labels=np.asarray(arrays[f"{name}.labels"])) for name in meta["parts"]}
    return meta["dataset"], DecodedFolder(meta["source"], meta["size"], meta["fingerprint"], meta["class_names"], parts, meta["skipped_files"])


def shipped_for(dataset: str, size: int) -> Optional[object]:
    """The package the job was given (``$IMAGEBENCH_SHIPPED_DATA``) when it is this dataset at this size; else None."""
    path = os.environ.get(ENV_SHIPPED_DATA)
    if not path:
        return None
    shipped_as, folder = unpack(Path(path))
    if folder.size != size or shipped_as != dataset:
        return None  # shipped for another dataset or size of the sweep: not this trial's
    return folder
