"""What imagebench keeps on a machine between sweeps, and clearing it (``imagebench cache``).

- **Decode and feature caches** (``data.cache``): the project's ``.cache/`` (or ``$IMAGEBENCH_CACHE``)
  and, on a Ray node, the node's own (``node_cache_base``), shared by its actors. Bounded by
  ``$IMAGEBENCH_CACHE_MAX_GB`` (least recently used entries go first); cleared entry by entry, each
  decoded again when a trial needs it.
- **Scratch folders** of Ray actors (``imagebench-node-*`` in the node's temp folder): an actor
  holds a lock on its folder's owner file while it lives; a folder whose lock can be taken is a dead
  actor's and is removed by the next actor on the node, or by ``--clear``. A live one is never removed.

No Ray here: the Ray executor runs ``places`` / ``clear_places`` on each of its nodes.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from imagebench.core.contract import ENV_CACHE
from imagebench.data import cache

SCRATCH_PREFIX = "imagebench-node-"  # an actor's scratch project in the node's temp folder
SCRATCH_OWNER = ".owner"  # locked by the actor while it lives
ABANDONED_AFTER = 60.0  # seconds: a folder without its owner file is older than any actor's start-up


def node_cache_base() -> Path:
    """The decode and feature caches of a Ray node's actors: the node's ``$IMAGEBENCH_CACHE``, else
    one folder per user in its temp folder (shared by every actor on the node)."""
    return Path(os.environ.get(ENV_CACHE) or Path(tempfile.gettempdir()) / f"imagebench-cache-{os.getuid()}")


def hold_scratch(folder: Path):
    """Lock the scratch folder's owner file for this process's lifetime (the open file keeps it)."""
    owner = open(folder / SCRATCH_OWNER, "w")
    fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return owner


def _abandoned(folder: Path) -> bool:
    """A dead actor's folder: its owner lock can be taken (a lock, not a pid: it holds across PID
    namespaces and pid reuse), or it never got an owner file and is older than any start-up."""
    owner_file = folder / SCRATCH_OWNER
    try:
        if not owner_file.exists():
            return time.time() - folder.stat().st_mtime > ABANDONED_AFTER
        with open(owner_file) as owner:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while its actor lives
            return True
    except OSError:  # BlockingIOError: alive; else removed meanwhile, or not ours to read
        return False


def scratch_folders(temp_dir: Optional[Path] = None) -> list[Path]:
    return sorted((temp_dir or Path(tempfile.gettempdir())).glob(f"{SCRATCH_PREFIX}*"))


def remove_abandoned_scratch(temp_dir: Path) -> list[Path]:
    """Remove the scratch folders of dead actors (a killed actor never runs its shutdown)."""
    removed = []
    for folder in scratch_folders(temp_dir):
        if _abandoned(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


@dataclass(frozen=True)
class Place:
    """One kind of thing kept on a machine: where, how many, how large."""

    what: str
    path: Path
    count: int
    size: int  # bytes
    note: str = ""
    unit: tuple[str, str] = ("entry", "entries")  # what is counted, one and several

    @property
    def counted(self) -> str:
        return f"{self.count} {self.unit[0] if self.count == 1 else self.unit[1]}"


FOLDERS = ("folder", "folders")


def _cache_place(what: str, base: Path) -> Place:
    entries = cache.cache_entries(base)
    return Place(what, base, len(entries), sum(entry.size for entry in entries), f"limit {cache.cache_limit_bytes() / 1024**3:g} GB")


def _scratch_place(folders: list[Path], note: str) -> Place:
    size = sum(cache.folder_size(folder) for folder in folders if folder.exists())
    return Place("Ray actors' scratch folders", Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}*", len(folders), size, note, FOLDERS)


def _cache_bases(with_project: bool) -> list[tuple[str, Path]]:
    bases = []
    project = cache.cache_base() if with_project else None
    if project is not None:
        bases.append(("data caches (decoded, features, shipped)", project))
    node = node_cache_base()
    if node.is_dir() and node != project:
        bases.append(("Ray actors' data caches (decoded, features, shipped)", node))
    return bases


def places(with_project: bool = True) -> list[Place]:
    """What is kept here; ``with_project``: this project's caches too (not on a Ray node)."""
    found = [_cache_place(what, base) for what, base in _cache_bases(with_project)]
    folders = scratch_folders()
    dead = sum(1 for folder in folders if _abandoned(folder))
    return found + [_scratch_place(folders, f"{len(folders) - dead} in use by a running actor")]


def clear_places(with_project: bool = True) -> list[Place]:
    """Remove every cache entry and every dead actor's scratch folder; what was removed, by place."""
    removed = []
    for what, base in _cache_bases(with_project):
        entries = cache.clear(base)
        removed.append(Place(what, base, len(entries), sum(entry.size for entry in entries)))
    folders = [folder for folder in scratch_folders() if _abandoned(folder)]
    size = sum(cache.folder_size(folder) for folder in folders)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    kept = len(scratch_folders())
    removed.append(Place("Ray actors' scratch folders", Path(tempfile.gettempdir()) / f"{SCRATCH_PREFIX}*", len(folders), size,
                         f"{kept} kept: in use by a running actor" if kept else "", FOLDERS))  # fmt: skip
    return removed


def machine_name() -> str:
    return socket.gethostname()


def human_size(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def report_lines(where: str, found: list[Place], cleared: bool) -> list[str]:
    """One block per machine: each place with its count and size, and the total."""
    verb = "removed" if cleared else "kept"
    lines = [f"{where}:"]
    for place in found:
        note = f" ({place.note})" if place.note else ""
        lines.append(f"  {place.what}: {place.path}: {place.counted} {verb}, {human_size(place.size)}{note}")
    lines.append(f"  total {verb}: {human_size(sum(place.size for place in found))}")
    return lines
