"""Shared by every benchmark: repeats, the machine, versions, and the JSON record.

Each benchmark measures the baseline and ours in the same run, on the same data and machine, and
writes ``results/benchmarks/<name>.json``; ratios > 1 mean ours is better (faster).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from imagebench.training.resources import available_cores
from imagebench.store import package_versions

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "results" / "benchmarks"


def scratch_project(folder: Path) -> Path:
    """A throw-away project (notebooks, params) that the benchmark's trials use as their root: their
    records, notebooks and kept weights stay out of the repository."""
    project = Path(folder) / "project"
    for name in ("notebooks", "params"):
        shutil.copytree(REPO / name, project / name)
    os.environ["IMAGEBENCH_ROOT"] = str(project)
    return project


def scratch_workspace(folder: Path) -> Path:
    """A throw-away decode/feature cache, MLflow store and project (``scratch_project``) in ``folder``,
    for this process and the workers and kernels it starts; returns the project."""
    folder = Path(folder)
    os.environ["IMAGEBENCH_CACHE"] = str(folder / "cache")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    return scratch_project(folder)


# the per-epoch line a trial prints (trial._epoch_reporter): "epoch 2/4 ... | 1.3s" at its end
EPOCH_SECONDS = re.compile(r"^epoch \d+/\d+ .*\|\s*([0-9.]+)s\s*$", re.MULTILINE)


def epoch_seconds(log: Path) -> list[float]:
    """Each epoch's seconds as a trial's log printed them ([] if there is no log)."""
    if not log.exists():
        return []
    return [float(value) for value in EPOCH_SECONDS.findall(log.read_text(encoding="utf-8", errors="replace"))]


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": available_cores(), "cpu": cpu, "gpu": os.environ.get("IMAGEBENCH_BENCH_GPU", "none"),
            "python": platform.python_version()}  # fmt: skip


def write_record(name: str, baseline: list[float], ours: list[float], unit: str, goal: str, higher_is_better: bool,
                 packages: list[str], notes: str = "", extra: dict | None = None) -> dict:
    base, mine = summary(baseline), summary(ours)
    ratio = mine["median"] / base["median"] if higher_is_better else base["median"] / mine["median"]
    record = {
        "name": name, "baseline": base, "ours": mine, "unit": unit, "ratio": ratio, "goal": goal,
        "machine": machine(), "versions": package_versions(["imagebench", "numpy", *packages]),
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "notes": notes, **(extra or {}),
    }  # fmt: skip
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{name}.json").write_text(json.dumps(record, indent=2), encoding="utf-8")
    print(f"\n{name}: baseline {base['median']:.1f} {unit} (min {base['min']:.1f}, max {base['max']:.1f}) | "
          f"ours {mine['median']:.1f} {unit} (min {mine['min']:.1f}, max {mine['max']:.1f}) | ratio {ratio:.2f}x | goal {goal}")
    print(f"written {OUT_DIR / (name + '.json')}")
    return record
