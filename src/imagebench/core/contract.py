"""The sweep ↔ kernel contract: every environment variable by which a sweep tells a trial how to run.

A sweep's trial runs in a kernel the sweep does not control directly (a worker process here, or a
Ray actor's worker on another node), kept warm between trials. What the sweep decides for one job
reaches the kernel as environment variables, set by the job's first notebook cell
(``worker.ENVIRONMENT_TAG``); what holds for every job of a worker is set when the worker starts.
They say how a trial is run, never what it is: none is a parameter or part of a fingerprint.
Everything that reads or writes one of these names imports it from here.

The other way, the kernel tells the sweep how far a trial is by one plain line per epoch in its
output (``progress_line``), which the sweep's display reads back (``last_progress``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

# --- per job (set by the job's first cell; None removes the name, so nothing leaks to the next trial)
ENV_RUN_ID = "IMAGEBENCH_RUN_ID"  # the child run the sweep created; the trial fills it
ENV_EPOCH_BUDGET = "IMAGEBENCH_EPOCH_BUDGET"  # halving: train up to this many epochs in all
ENV_CHECKPOINT = "IMAGEBENCH_CHECKPOINT"  # halving: continue from / save to this file
ENV_RECORD_DIR = "IMAGEBENCH_RECORD_DIR"  # where the trial journals what the store does not take
ENV_SHIPPED_DATA = "IMAGEBENCH_SHIPPED_DATA"  # --ship-data: the package of the dataset on this node (data.shipping)

# --- per worker (set in the worker's environment when it starts)
ENV_ROOT = "IMAGEBENCH_ROOT"  # the project root: train.ipynb, default store, decode cache
ENV_THREADS = "IMAGEBENCH_THREADS"  # framework threads this trial may use (cores // parallel trials)
ENV_KERNEL_MAX_MB = "IMAGEBENCH_KERNEL_MAX_MB"  # a kept kernel holding more is replaced
TRACKING_URI = "MLFLOW_TRACKING_URI"

# --- settings of the machine, read where they are used; a sweep passes them on to its Ray nodes
ENV_STORE_PATIENCE = "IMAGEBENCH_STORE_PATIENCE"  # seconds a write waits for an unreachable store
ENV_FEATURE_CACHE = "IMAGEBENCH_FEATURE_CACHE"  # "off": frozen backbones run on every image, every epoch
ENV_CACHE = "IMAGEBENCH_CACHE"  # the decode and feature caches' root; "off" disables them
ENV_CACHE_MAX_GB = "IMAGEBENCH_CACHE_MAX_GB"  # the caches' size limit: least recently used entries go first

# Settings of the machine that typed `imagebench sweep` that its trials must share wherever they run
# (a Ray node has its own environment): the store and how patiently to wait for it, the feature
# cache switch and size limit, the kernel memory limit.
SHARED_WITH_NODES = (
    TRACKING_URI,
    ENV_STORE_PATIENCE,
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    ENV_FEATURE_CACHE,
    ENV_KERNEL_MAX_MB,
    ENV_CACHE_MAX_GB,
)


def job_environment(run_id: str, record_dir: Path, epoch_budget: Optional[int] = None,
                    checkpoint: Optional[Path] = None, shipped_data: Optional[Path] = None) -> dict[str, Optional[str]]:  # fmt: skip
    """The per-job variables, every one present (None = unset) so a warm kernel forgets the last job's."""
    return {
        ENV_RUN_ID: run_id,
        ENV_RECORD_DIR: str(record_dir),
        ENV_EPOCH_BUDGET: None if epoch_budget is None else str(epoch_budget),
        ENV_CHECKPOINT: None if checkpoint is None else str(checkpoint),
        ENV_SHIPPED_DATA: None if shipped_data is None else str(shipped_data),
    }


# --- the kernel's progress, one line per epoch: readable in a notebook and a log file, and read back
# by the sweep's display ("epoch 3/10")
PROGRESS_LINE = re.compile(r"^epoch (\d+)/(\d+)", re.MULTILINE)


def progress_line(epoch: int, epochs: int, train_loss: float, train_accuracy: float, val_loss: float, val_accuracy: float,
                  lr: float, seconds: float) -> str:  # fmt: skip
    return (f"epoch {epoch}/{epochs}  train loss {train_loss:.4f} acc {train_accuracy:.4f}"
            f"  | val loss {val_loss:.4f} acc {val_accuracy:.4f}  | lr {lr:.2e}  | {seconds:.1f}s")  # fmt: skip


def parse_progress_line(line: str) -> Optional[tuple[int, int]]:
    """(epoch, epochs) of a ``progress_line``; None for any other line."""
    found = PROGRESS_LINE.match(line)
    return (int(found[1]), int(found[2])) if found else None


def last_progress(output: str) -> Optional[tuple[int, int]]:
    """(epoch, epochs) of the last ``progress_line`` in a stretch of a kernel's output, None if it has none."""
    found = PROGRESS_LINE.findall(output)
    return (int(found[-1][0]), int(found[-1][1])) if found else None
