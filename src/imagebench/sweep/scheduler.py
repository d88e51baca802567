"""Run a sweep's jobs on an executor, N at a time, with timeouts and a live display.

What to run is the sweep's decision, where it runs the executor's (``executors``); this loop is the
one place between them: it opens each job's run when the job can start, submits it, watches its
progress and ``--trial-timeout``, and hands every ending to the sweep's ``OutcomeRecorder``. It is
the same loop for the local worker processes and for a Ray cluster.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from tqdm.auto import tqdm

from imagebench import store
from imagebench.executors import Executor, Job
from imagebench.sweep.outcomes import JOURNALED, OutcomeRecorder, TrialOutcome

POLL_SECONDS = 0.5  # how often the display, progress and --trial-timeout are looked at
WAKE_SECONDS = 0.02  # how often endings are looked for: a worker must not sit idle waiting for the loop


@dataclass
class Started:
    job: Job
    started: float
    epoch_text: str = "starting"


class Display:
    """One live view of a sweep: a bar in a terminal, plain lines always (readable in logs and CI)."""

    def __init__(self, title: str, total: int, workers: int, show: bool):
        self.title, self.total, self.workers, self.show = title, total, workers, show
        self.done = self.failed = 0
        self.durations: list[float] = []
        interactive = show and sys.stdout.isatty()
        # stdout: the workers' stderr goes to per-trial files, so nothing else writes across the bar
        self.bar = tqdm(total=total, desc=title, unit="trial", disable=not interactive, dynamic_ncols=True, file=sys.stdout)

    def eta_seconds(self, running: list[Started], pending: int) -> Optional[float]:
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = time.monotonic()
        left = sum(max(0.0, mean - (now - job.started)) for job in running) + pending * mean
        return left / self.workers

    def status_text(self, running: list[Started], pending: int) -> str:
        eta = self.eta_seconds(running, pending)
        eta_text = f"ETA {_duration(eta)}" if eta is not None else "ETA after the first trial"
        return f"done {self.done}/{self.total}, failed {self.failed}, running {len(running)} | {eta_text}"

    def update_running(self, running: list[Started], pending: int) -> None:
        shown = ", ".join(f"{job.job.label} {job.epoch_text}" for job in running[:3])
        self.bar.set_postfix_str(f"{shown} | {self.status_text(running, pending)}")

    def finished(self, outcome: TrialOutcome, scores: str, running: list[Started], pending: int) -> None:
        self.done += 1
        self.failed += outcome.status not in ("FINISHED", JOURNALED)
        self.durations.append(outcome.seconds)
        self.bar.update(1)
        line = (
            f"[{self.done:>3}/{self.total}] {outcome.status:<8} {outcome.notebook.stem:<44} {scores} ({outcome.seconds:.0f}s)"
            f"  | {self.status_text(running, pending)}"
        )
        if self.show:
            self.bar.write(line, file=sys.stdout)
            sys.stdout.flush()

    def note(self, text: str) -> None:
        if self.show:
            self.bar.write(text, file=sys.stdout)
            sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class Scheduler:
    executor: Executor
    recorder: OutcomeRecorder = field(default_factory=OutcomeRecorder)
    trial_timeout: Optional[float] = None  # seconds per job
    display: Optional[Display] = None
    outcomes: list[TrialOutcome] = field(default_factory=list)

    @property
    def store_error(self) -> Optional[store.StoreUnavailable]:
        return self.recorder.store_error

    def run(self, jobs: list[Job], scores=lambda outcome: "") -> list[TrialOutcome]:
        """Run ``jobs`` and return their outcomes in finishing order.

        If the MLflow store stays down, no further job starts; running ones finish into their
        journals, then ``StoreUnavailable`` is raised (the jobs not started are simply not run).
        """
        pending, running, outcomes = deque(jobs), {}, []
        try:
            while running or (pending and self.store_error is None):
                self._start_jobs(pending, running)
                ended = [(job, end, running.pop(job.label)) for job, end in self._endings(POLL_SECONDS)]
                self.recorder.ask_store_after([job for job, _, _ in ended])  # a trial that journaled: not a second patience
                # the next jobs start before the ended ones are recorded (their notebooks attached,
                # their numbers read back): the freed workers train while the driver keeps records
                self._start_jobs(pending, running)
                for job, end, started in ended:
                    outcome = self.recorder.record(job, end, started.started)
                    outcomes.append(outcome)
                    if self.display:
                        shown = scores(outcome) if self.store_error is None else outcome.error
                        self.display.finished(outcome, shown, list(running.values()), len(pending))
                self._watch(running)
                if self.display:
                    self.display.update_running(list(running.values()), len(pending))
        except KeyboardInterrupt:
            for job, end in self.executor.stop_all("sweep interrupted"):
                outcomes.append(self.recorder.interrupted(job, end, running.pop(job.label).started))
            raise
        finally:
            self.outcomes.extend(outcomes)
        if self.store_error is not None:
            raise self.store_error
        return outcomes

    def _endings(self, seconds: float) -> list:
        """The jobs that end within ``seconds``, returned as soon as there are any."""
        deadline = time.monotonic() + seconds
        while True:
            ended = self.executor.finished()
            if ended or time.monotonic() >= deadline:
                return ended
            time.sleep(WAKE_SECONDS)

    def _start_jobs(self, pending: deque, running: dict[str, Started]) -> None:
        while pending and self.store_error is None and self.executor.free_slots() > 0:
            job = pending[0]
            try:
                job.run_id = job.open_run()
            except store.StoreUnavailable as exc:  # its run could not be created: the job never started
                self.recorder.store_error = exc
                return
            self.executor.submit(job)
            running[job.label] = Started(job, time.monotonic())
            pending.popleft()

    def _watch(self, running: dict[str, Started]) -> None:
        now = time.monotonic()
        for started in running.values():
            started.epoch_text = self.executor.progress(started.job) or started.epoch_text
            if self.trial_timeout and now - started.started > self.trial_timeout:
                self.executor.stop(started.job, f"stopped after --trial-timeout {self.trial_timeout:g}s ({started.epoch_text})")
