"""The sweep records how each job ended, the same way whichever executor ran it.

An executor reports a ``JobEnd`` (an error or none, and where it ran) with the output notebook on
this machine; here that becomes the run's final state in MLflow: notebook attached, the run closed
FAILED with the reason if the trial could not close it itself, a journal left by an outage replayed.
While the store is down the same goes to the trial's journal instead (``record``), for
``imagebench relog`` or the next sweep to replay.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from imagebench.store import record
from imagebench import store
from imagebench.core import metrics
from imagebench.executors import Job, JobEnd
from imagebench.executors.worker import COSTS_FILE
from imagebench.core.planned import Trial

JOURNALED = "JOURNALED"  # outcome of a job that ended while the store was down: its record is in its journal


@dataclass
class TrialOutcome:
    trial: Trial
    run_id: str
    status: str
    seconds: float
    notebook: Path
    error: str = ""

    @property
    def finished_with_error(self) -> bool:
        """Trained and recorded FINISHED, but something after the trial's own end failed (a later
        cell, returning its files from a Ray node): shown with its error, never as a bare FINISHED."""
        return self.status == "FINISHED" and bool(self.error)


def notebook_problem(path: Path) -> Optional[str]:
    """Why ``path`` is not a whole notebook to attach to the run (missing, not a file, cut short
    by a full disk), or None. A half-written notebook is never attached as if it were the trial's."""
    import nbformat

    if not path.is_file():
        return f"no output notebook at {path}" + ("" if not path.exists() else " (not a regular file)")
    try:
        nbformat.read(path, as_version=4)
    except Exception as exc:
        return f"output notebook {path} is incomplete ({type(exc).__name__}: disk full while writing it?), not attached"
    return None


def log_job_costs(recorder: record.RunRecorder, job: Job, attach_seconds: float, tags: dict[str, str]) -> None:
    """The job's ``metrics.SWEEP_COSTS`` as its worker measured them (``COSTS_FILE``), the notebook's
    attaching to the run added to its write-back (a later rung of halving adds to the earlier rungs'),
    in one write with the job's ``tags``."""
    path = job.record_dir / COSTS_FILE
    try:
        costs = {key: float(value) for key, value in json.loads(path.read_text(encoding="utf-8")).items()}
    except (OSError, ValueError, AttributeError):  # no worker got that far (it died first): the attaching only
        costs = {}
    costs[metrics.NOTEBOOK_SECONDS.key] = costs.get(metrics.NOTEBOOK_SECONDS.key, 0.0) + attach_seconds
    if job.checkpoint is not None:
        earlier = recorder.recorded_metrics(metrics.SWEEP_COSTS)
        costs = {key: value + earlier.get(key, 0.0) for key, value in costs.items()}
    recorder.log_batch(metrics=costs, tags=tags)
    path.unlink(missing_ok=True)  # recorded: a rerun of the job must not count it twice


def _without_store_error(error: Optional[str]) -> Optional[str]:
    """A trial that raised only because the store was down did not fail: its journal holds its real end."""
    return None if error and error.startswith(store.StoreUnavailable.__name__) else error


class OutcomeRecorder:
    """Closes each job's record; after the store has stayed down once, journals instead."""

    def __init__(self) -> None:
        self.store_error: Optional[store.StoreUnavailable] = None  # set: start nothing more

    def ask_store_after(self, jobs: list[Job]) -> None:
        """Jobs that just ended: one whose trial journaled has already waited out the store for a
        whole patience. Before anything waits for the store again (the next job's run, this job's
        record), the store is asked once, at once; if it still does not answer, ``store_error``."""
        for job in jobs:
            if self.store_error is None:
                try:
                    record.check_store_if_journaled(job.record_dir)
                except store.StoreUnavailable as exc:
                    self.store_error = exc

    def record(self, job: Job, end: JobEnd, started: float) -> TrialOutcome:
        if self.store_error is None:
            try:
                return self._in_store(job, end, started)
            except store.StoreUnavailable as exc:
                self.store_error = exc  # no further job starts; those running finish into their journals
        return self._in_journal(job, end, started)

    def _in_store(self, job: Job, end: JobEnd, started: float) -> TrialOutcome:
        error = end.error
        recorder = record.RunRecorder(job.run_id, job.record_dir)
        recorder.send_unsent()  # epochs a killed kernel still held
        journal = job.record_dir / record.JOURNAL
        if journal.is_file():  # the store was down during the trial and answers again: complete the record now
            record.relog(journal)
            error = _without_store_error(error)
        problem = notebook_problem(job.output)
        attaching, tags = time.perf_counter(), {store.TAG_NODE: end.where} if end.where else {}
        if problem is None:
            store.client().log_artifact(job.run_id, str(job.output), store.ARTIFACT_NOTEBOOK_DIR)
            tags[store.TAG_NOTEBOOK] = str(job.output)
        elif job.output.exists() or job.output.is_symlink():
            error = f"{error}; {problem}" if error else problem
        log_job_costs(recorder, job, time.perf_counter() - attaching, tags)
        status = store.run_status(job.run_id)
        if status == "RUNNING":  # the kernel died or never reached the trial code: close the record here
            status = "FAILED" if error else "FINISHED"
            store.end_run(job.run_id, status, error)
        elif error and status == "FINISHED":  # trained and logged, but a later cell raised
            store.set_tags(job.run_id, {store.TAG_ERROR: error})
        return TrialOutcome(job.trial, job.run_id, status, time.monotonic() - started, job.output, error or "")

    def _in_journal(self, job: Job, end: JobEnd, started: float) -> TrialOutcome:
        """The store is down: the notebook and, if the trial did not record its own end, the
        outcome go to the trial's journal, replayed later by ``imagebench relog``."""
        recorder = record.RunRecorder(job.run_id, job.record_dir, self.store_error)
        recorder.send_unsent()  # (into the journal)
        attaching, tags = time.perf_counter(), {}
        if notebook_problem(job.output) is None:
            recorder.log_artifact(job.output, store.ARTIFACT_NOTEBOOK_DIR)
            tags[store.TAG_NOTEBOOK] = str(job.output)
        log_job_costs(recorder, job, time.perf_counter() - attaching, tags)
        error = _without_store_error(end.error)  # the outage is said once, in the sweep's summary
        if not record.journal_has_end(job.record_dir):
            recorder.end("FAILED" if error else "FINISHED", error)
        note = f"record kept in {recorder.journal} (store unavailable)"
        return TrialOutcome(job.trial, job.run_id, JOURNALED, time.monotonic() - started, job.output,
                            f"{error}; {note}" if error else note)  # fmt: skip

    def interrupted(self, job: Job, end: JobEnd, started: float) -> TrialOutcome:
        """Ctrl-C / SIGTERM: the run ends KILLED (unless it already ended), its partial notebook kept."""
        if self.store_error is None and store.run_status(job.run_id) == "RUNNING":
            store.end_run(job.run_id, "KILLED", end.error)
        return self.record(job, end, started)
