"""Where a sweep's jobs run, behind one small interface; what runs is decided by the sweep alone.

An executor starts jobs, tells how each ended (``JobEnd``) and stops them when asked; it knows
nothing of MLflow, strategies, resume or summaries. The sweep creates each job's run before
submitting it and records every ending itself (``outcomes``), the same way for every executor.

- ``local`` (default): worker processes on this machine, each with a warm papermill kernel.
- ``ray``: the same workers inside Ray actors on the nodes of a Ray cluster, each actor asking
  Ray for the trial's CPUs and GPUs; notebooks, logs, journals and checkpoints travel with the job.

A new executor is a class with the ``Executor`` methods and a ``from_options`` class method, and an
entry in ``EXECUTORS``: its module (imported only when chosen) and the options only it takes
(``ExecutorOption``), which ``imagebench sweep`` offers and refuses for any other executor.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

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
    shipped_data: Optional[Path] = None  # --ship-data: the dataset's package on the node that runs it

    @property
    def label(self) -> str:
        return self.output.stem

    @property
    def record_dir(self) -> Path:
        """Where the trial journals what the store does not take (one per trial: halving rungs share it)."""
        return self.output.parent / f"{self.trial.name}.record"

    def environment(self) -> dict[str, Optional[str]]:
        return job_environment(self.run_id, self.record_dir, self.epoch_budget, self.checkpoint, self.shipped_data)


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


def check_whole_number(flag: str, value: object, least: int) -> None:
    """A count given to a sweep (workers, CPUs, ...): None (not given) or a whole number of at least ``least``."""
    if value is not None and (not isinstance(value, int) or value < least):
        raise ParamsError(f"{flag} {value} is invalid: it must be a whole number of at least {least}")


RESOURCE_PRECISION = 4  # decimals: Ray counts resources in units of 0.0001


def check_resource_amount(flag: str, value: object, zero_allowed: bool) -> None:
    """CPUs or GPUs a trial asks for, by Ray's rule: a fraction of one unit (several trials share it)
    or a whole number of units, never 1.5 of one; None: not given."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ParamsError(f"{flag} {value!r} is invalid: it must be a number, e.g. 1, 2 or 0.25")
    if value < 0 or (value == 0 and not zero_allowed):
        raise ParamsError(f"{flag} {value:g} is invalid: it must be {'0 or more' if zero_allowed else 'more than 0'} "
                          f"(a fraction such as 0.25 lets 4 trials share one)")  # fmt: skip
    if value > 1 and value != int(value):
        raise ParamsError(f"{flag} {value:g} is invalid: above 1 it must be a whole number (Ray shares one unit "
                          f"between trials, it never gives a trial part of a second one); use e.g. 0.5, 1 or 2")  # fmt: skip
    if round(value, RESOURCE_PRECISION) != value:
        raise ParamsError(f"{flag} {value:g} is invalid: Ray counts in steps of 0.0001; round it (e.g. 0.3333)")


@dataclass(frozen=True)
class ExecutorOption:
    """An option of ``imagebench sweep`` that only one executor takes: the CLI adds it from the
    registry, ``SweepOptions.executor_options`` holds it by ``key``, the executor gets its value."""

    flag: str  # "--cpus-per-trial"
    # int: a whole number (of at least ``least``); float: an amount of a resource (``check_resource_amount``,
    # 0 allowed when ``least`` is 0); bool: a switch (no value); str: text
    type: type
    default: Any  # what the executor uses when it is not given
    help: str  # for `imagebench sweep --help`; "{default}" is replaced by the default
    least: int = 0

    @property
    def key(self) -> str:
        """cpus_per_trial: the key in ``SweepOptions.executor_options`` and the argparse dest."""
        return self.flag.removeprefix("--").replace("-", "_")

    def check(self, value: object) -> None:
        if self.type is int:
            check_whole_number(self.flag, value, self.least)
        elif self.type is float:
            check_resource_amount(self.flag, value, zero_allowed=self.least == 0)
        elif self.type is bool and not isinstance(value, bool):
            raise ParamsError(f"{self.flag} takes no value (it is a switch)")
        elif not isinstance(value, self.type):
            raise ParamsError(f"{self.flag} {value!r} is invalid: it must be {self.type.__name__}")


@dataclass(frozen=True)
class ExecutorEntry:
    module: str  # imported only when chosen: Ray loads only for --executor ray
    cls: str  # has the ``Executor`` methods and ``from_options(sweep_options, settings)``
    help: str
    options: tuple[ExecutorOption, ...] = ()  # what only this executor takes

    def settings(self, given: dict[str, Any]) -> dict[str, Any]:
        """Each of this executor's options by key: the value given, else its default."""
        return {option.key: option.default if given.get(option.key) is None else given[option.key] for option in self.options}


EXECUTORS = {
    "local": ExecutorEntry("imagebench.executors.local", "LocalExecutor", "worker processes on this machine"),
    "ray": ExecutorEntry("imagebench.executors.ray_cluster", "RayExecutor", "Ray actors on the nodes of a Ray cluster", (
        ExecutorOption("--address", str, "auto", "the cluster to join (auto = the one `ray start` made here, or HOST:PORT of its "
                                                 "head; default {default})"),
        ExecutorOption("--cpus-per-trial", float, 1, "CPUs each trial asks Ray for (default {default}; a fraction such as 0.5 "
                                                     "packs two trials per CPU)", least=1),
        ExecutorOption("--gpus-per-trial", float, 0, "GPUs each trial asks Ray for (default {default}); a trial only starts where "
                                                     "they are; a fraction such as 0.25 puts 4 trials on one GPU"),
        ExecutorOption("--ship-data", bool, False, "send the dataset, decoded, to the nodes through Ray's object store (once per "
                                                   "node) instead of reading it at the same path there; automatic for a node "
                                                   "without the dataset's folder"),
    )),
}  # fmt: skip


def executor_entry(name: str) -> ExecutorEntry:
    if name not in EXECUTORS:
        choices = ", ".join(f"{key} ({entry.help})" for key, entry in EXECUTORS.items())
        raise ParamsError(f"--executor '{name}' is unknown: use one of {choices}")
    return EXECUTORS[name]


def executor_options() -> list[tuple[str, ExecutorOption]]:
    """Every executor's own options, with the executor that takes each."""
    return [(name, option) for name, entry in EXECUTORS.items() for option in entry.options]


def check_executor_options(name: str, given: dict[str, Any]) -> None:
    """``given`` (by key; None: not given) holds only options ``name`` takes, each valid: an option of
    another executor is an error, not silently ignored."""
    accepted = {option.key: option for option in executor_entry(name).options}
    for key, value in given.items():
        if value is None:
            continue
        if key in accepted:
            accepted[key].check(value)
            continue
        owner, option = _owner_of(key)
        given_as = option.flag if option.type is bool else f"{option.flag} {value}"  # a switch has no value to show
        raise ParamsError(f"{given_as} needs --executor {owner} (this sweep runs on --executor {name})")


def _owner_of(key: str) -> tuple[str, ExecutorOption]:
    for owner, option in executor_options():
        if option.key == key:
            return owner, option
    raise ParamsError(f"unknown executor option '{key}': the executors take {', '.join(option.key for _, option in executor_options())}")


def make_executor(name: str, options) -> Executor:
    """The executor ``name`` for a sweep's ``options`` (``SweepOptions``), given its own options' values."""
    entry = executor_entry(name)
    executor_class = getattr(importlib.import_module(entry.module), entry.cls)
    return executor_class.from_options(options, entry.settings(options.executor_options))
