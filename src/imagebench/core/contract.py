"""The sweep ↔ kernel contract: every environment variable by which a sweep tells a trial how to run.

A sweep's trial runs in a kernel the sweep does not control directly (a worker process here, or a
Ray actor's worker on another node), kept warm between trials. What the sweep decides for one job
reaches the kernel as environment variables, set by the job's first notebook cell
(``worker.ENVIRONMENT_TAG``); what holds for every job of a worker is set when the worker starts.
They say how a trial is run, never what it is: none is a parameter or part of a fingerprint.
Everything that reads or writes one of these names imports it from here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

# --- per job (set by the job's first cell; None removes the name, so nothing leaks to the next trial)
ENV_RUN_ID = "IMAGEBENCH_RUN_ID"  # the child run the sweep created; the trial fills it
ENV_EPOCH_BUDGET = "IMAGEBENCH_EPOCH_BUDGET"  # halving: train up to this many epochs in all
ENV_CHECKPOINT = "IMAGEBENCH_CHECKPOINT"  # halving: continue from / save to this file
ENV_RECORD_DIR = "IMAGEBENCH_RECORD_DIR"  # where the trial journals what the store does not take

# --- per worker (set in the worker's environment when it starts)
ENV_ROOT = "IMAGEBENCH_ROOT"  # the project root: train.ipynb, default store, decode cache
ENV_THREADS = "IMAGEBENCH_THREADS"  # framework threads this trial may use (cores // parallel trials)
ENV_KERNEL_MAX_MB = "IMAGEBENCH_KERNEL_MAX_MB"  # a kept kernel holding more is replaced
TRACKING_URI = "MLFLOW_TRACKING_URI"

# Settings of the machine that typed `imagebench sweep` that its trials must share wherever they run
# (a Ray node has its own environment): the store and how patiently to wait for it, the feature
# cache switch, the kernel memory limit.
SHARED_WITH_NODES = (
    TRACKING_URI,
    "IMAGEBENCH_STORE_PATIENCE",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "IMAGEBENCH_FEATURE_CACHE",
    ENV_KERNEL_MAX_MB,
)


def job_environment(run_id: str, record_dir: Path, epoch_budget: Optional[int] = None,
                    checkpoint: Optional[Path] = None) -> dict[str, Optional[str]]:  # fmt: skip
    """The per-job variables, every one present (None = unset) so a warm kernel forgets the last job's."""
    return {
        ENV_RUN_ID: run_id,
        ENV_RECORD_DIR: str(record_dir),
        ENV_EPOCH_BUDGET: None if epoch_budget is None else str(epoch_budget),
        ENV_CHECKPOINT: None if checkpoint is None else str(checkpoint),
    }
