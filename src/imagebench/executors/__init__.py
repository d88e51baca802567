"""Where a sweep's jobs run, behind one small interface; what runs is decided by the sweep alone.

An executor starts jobs, tells how each ended (``JobEnd``) and stops them when asked; it knows
nothing of MLflow, strategies, resume or summaries. The sweep creates each job's run before
submitting it and records every ending itself (``outcomes``), the same way for every executor.

- ``local`` (default): worker processes on this machine, each with a warm papermill kernel.
- ``ray``: the same workers inside Ray actors on the nodes of a Ray cluster, each actor asking
  Ray for the trial's CPUs and GPUs; notebooks, logs, journals and checkpoints travel with the job.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from imagebench.core.contract import job_environment
from imagebench.core.planned import Trial
from imagebench.core.params import ParamsError


@dataclass
class Job:
    """One execution of train.ipynb: a whole trial, or one halving rung of it."""

    trial: Trial
    open_run: Callable[[], str]  # creates (or reopens) the child run when the job starts, not before:
    output: Path  # a sweep killed at trial 2 of 52 must not leave 50 never-started runs behind
    epoch_budget: Optional[int] = None
    checkpoint: Optional[Path] = None
    run_id: str = ""

    @property
    def label(self) -> str:
        return self.output.stem

    @property
    def record_dir(self) -> Path:
        """Where the trial journals what the store does not take (one per trial: halving rungs share it)."""
        return self.output.parent / f"{self.trial.name}.record"

    def environment(self) -> dict[str, Optional[str]]:
        return job_environment(self.run_id, self.record_dir, self.epoch_budget, self.checkpoint)


@dataclass
class JobEnd:
    """How a job ended as its executor saw it. ``error`` None: the notebook ran to its end.
    By then the output notebook and its log are at ``job.output`` on this machine (if they exist)."""

    error: Optional[str]
    where: str = ""  # the host / Ray node it ran on


class Executor(Protocol):
    slots: int  # jobs it runs at once (the display's ETA divides by it)

    def free_slots(self) -> int:
        """How many more jobs could start right now."""

    def submit(self, job: Job) -> None:
        """Start ``job`` (its run already exists: ``job.run_id``)."""

    def finished(self) -> list[tuple[Job, JobEnd]]:
        """Jobs that ended since the last call."""

    def progress(self, job: Job) -> str:
        """What a running job is doing ("epoch 3/10"), for the display."""

    def stop(self, job: Job, reason: str) -> None:
        """Stop a running job; it is then reported by ``finished`` with ``reason`` as its error."""

    def stop_all(self, reason: str) -> list[tuple[Job, JobEnd]]:
        """Interrupted: stop every running job now and return how each ended."""

    def close(self) -> None:
        """No more jobs: release workers (and cluster resources)."""


@dataclass(frozen=True)
class ExecutorEntry:
    module: str  # imported only when chosen: Ray loads only for --executor ray
    cls: str
    options: tuple[str, ...]  # the sweep options only this executor understands (flag names)
    help: str


EXECUTORS = {
    "local": ExecutorEntry("imagebench.executors.local", "LocalExecutor", (), "worker processes on this machine"),
    "ray": ExecutorEntry("imagebench.executors.ray_cluster", "RayExecutor", ("--address", "--cpus-per-trial", "--gpus-per-trial"),
                         "Ray actors on the nodes of a Ray cluster"),
}  # fmt: skip


def executor_entry(name: str) -> ExecutorEntry:
    if name not in EXECUTORS:
        choices = ", ".join(f"{key} ({entry.help})" for key, entry in EXECUTORS.items())
        raise ParamsError(f"--executor '{name}' is unknown: use one of {choices}")
    return EXECUTORS[name]


def check_executor_options(name: str, given: dict[str, object]) -> None:
    """Options that belong to another executor are an error, not silently ignored."""
    accepted = executor_entry(name).options
    for flag, value in given.items():
        if value is not None and flag not in accepted:
            owner = next((key for key, entry in EXECUTORS.items() if flag in entry.options), "another executor")
            raise ParamsError(f"{flag} {value} needs --executor {owner} (this sweep runs on --executor {name})")


def make_executor(name: str, options) -> Executor:
    entry = executor_entry(name)
    return getattr(importlib.import_module(entry.module), entry.cls).from_options(options)
