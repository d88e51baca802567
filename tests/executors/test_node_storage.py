"""What imagebench keeps on a machine: the caches stay within their limit (least recently used go
first), and `imagebench cache` shows and clears them and dead actors' scratch folders, never a live
one's. (Every node of a Ray cluster: tests/executors/test_ray_cluster.py.)"""

import os
import signal
import subprocess
import sys
import time

import numpy as np
from helpers import run_imagebench

from imagebench.data import cache
from imagebench.executors.node_storage import SCRATCH_PREFIX

ENTRY_BYTES = 10_000


def _entry(base, name: str) -> None:
    compute = lambda: ({"images": np.zeros(ENTRY_BYTES, np.uint8)}, {})  # noqa: E731
    cache.cached_arrays(base / "decoded" / name, ("images",), {"version": 1}, compute)
    time.sleep(0.05)  # distinct times of use


def test_the_caches_stay_within_their_limit_least_recently_used_first(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEBENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("IMAGEBENCH_CACHE_MAX_GB", str(2.5 * ENTRY_BYTES / 1024**3))  # room for two entries
    for name in ("a", "b"):
        _entry(tmp_path, name)
    _entry(tmp_path, "a")  # read again: now the most recently used
    _entry(tmp_path, "c")
    assert sorted(entry.path.name for entry in cache.cache_entries(tmp_path)) == ["a", "c"]  # b went first
    monkeypatch.setenv("IMAGEBENCH_CACHE_MAX_GB", str(0.5 * ENTRY_BYTES / 1024**3))  # smaller than one entry
    _entry(tmp_path, "d")
    assert [entry.path.name for entry in cache.cache_entries(tmp_path)] == ["d"]  # the entry just written stays


HOLDER = ("import sys, time\nfrom pathlib import Path\nfrom imagebench.executors.node_storage import hold_scratch\n"
          "owner = hold_scratch(Path(sys.argv[1]))\nprint('held', flush=True)\ntime.sleep(600)\n")  # fmt: skip


def _actor_folder(temp_dir, name: str) -> subprocess.Popen:
    folder = temp_dir / f"{SCRATCH_PREFIX}{name}"
    (folder / "runs").mkdir(parents=True)
    (folder / "runs" / "001.ipynb").write_text("x" * 1000)
    actor = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert actor.stdout.readline().strip() == "held"
    return actor


def test_imagebench_cache_shows_and_clears_what_is_kept_but_never_a_live_actors_folder(project, tmp_path, monkeypatch):
    caches, temp_dir = tmp_path / "caches", tmp_path / "tmp"
    temp_dir.mkdir()
    monkeypatch.setenv("IMAGEBENCH_CACHE", str(caches))
    for name in ("a", "b"):
        _entry(caches, name)
    live, killed = _actor_folder(temp_dir, "live"), _actor_folder(temp_dir, "killed")
    os.kill(killed.pid, signal.SIGKILL)  # as Ray kills an actor: it never removes its folder
    killed.wait()
    environment = {**os.environ, "TMPDIR": str(temp_dir), "IMAGEBENCH_CACHE": str(caches)}
    try:
        shown = run_imagebench("cache", cwd=project, env=environment)
        assert shown.returncode == 0, shown.stderr
        assert f"data caches (decoded, features, shipped): {caches}: 2 entries kept, 19.8 KB (limit 20 GB)" in shown.stdout
        assert f"Ray actors' scratch folders: {temp_dir}/{SCRATCH_PREFIX}*: 2 folders kept" in shown.stdout
        assert "(1 in use by a running actor)" in shown.stdout and "clear with: imagebench cache --clear" in shown.stdout
        cleared = run_imagebench("cache", "--clear", cwd=project, env=environment)
        assert cleared.returncode == 0, cleared.stderr
        assert "2 entries removed" in cleared.stdout and "1 folder removed" in cleared.stdout
        assert "(1 kept: in use by a running actor)" in cleared.stdout
        assert not cache.cache_entries(caches) and sorted(path.name for path in temp_dir.iterdir()) == [f"{SCRATCH_PREFIX}live"]
    finally:
        live.kill()
