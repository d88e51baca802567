"""CPU threads per trial: one decision shared by the sweep (which sets it) and the backends (which apply it).

With N parallel workers on C cores each trial gets C // N threads; without that, every TensorFlow
or torch process sizes its pools to all C cores and N of them oversubscribe the CPU.
"""

from __future__ import annotations

import os
from typing import Optional

from imagebench.core.contract import ENV_THREADS  # noqa: E402
# Native pools read these at start-up (OpenMP/MKL/OpenBLAS in torch and numpy; TF's own pools).
NATIVE_THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects taskset/cgroup CPU sets, unlike os.cpu_count()
    except AttributeError:
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: Optional[int] = None) -> int:
    return max(1, (cores or available_cores()) // max(1, workers))


def thread_environment(threads: int) -> dict[str, str]:
    """Environment for a worker process limited to ``threads`` threads."""
    value = str(threads)
    return {ENV_THREADS: value, "TF_NUM_INTEROP_THREADS": "1", **{name: value for name in NATIVE_THREAD_VARIABLES}}


def requested_threads() -> Optional[int]:
    """Threads this trial was given by a parallel sweep, or None (library defaults: all cores)."""
    value = os.environ.get(ENV_THREADS, "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None
