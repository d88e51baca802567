"""Run trial jobs as worker processes, N at a time, with timeouts, failure isolation and a live display.

Each job is ``python -m imagebench.worker`` (which executes train.ipynb with papermill) in a
session of its own, so a trial that hangs, exhausts memory or kills its kernel is stopped or
noticed here and recorded FAILED with the reason; the other trials go on. Trials never share a
process: TensorFlow and torch trials can run side by side.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from tqdm.auto import tqdm

from imagebench import tracking
from imagebench.grid import Trial
from imagebench.resources import thread_environment
from imagebench.trial import ENV_CHECKPOINT, ENV_EPOCH_BUDGET
from imagebench.worker import error_file

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)", re.MULTILINE)
POLL_SECONDS = 0.5


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


@dataclass
class TrialOutcome:
    trial: Trial
    run_id: str
    status: str
    seconds: float
    notebook: Path
    error: str = ""


@dataclass
class RunningJob:
    job: Job
    process: subprocess.Popen
    started: float
    log_offset: int = 0
    epoch_text: str = "starting"
    stop_reason: str = ""  # set when we stop the process ourselves (timeout)


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _kill_tree(process: subprocess.Popen) -> None:
    """Kill the worker and every process under it (its kernel runs in a session of its own)."""
    import psutil

    try:
        family = psutil.Process(process.pid).children(recursive=True) + [psutil.Process(process.pid)]
    except psutil.NoSuchProcess:
        return
    for member in family:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


class Display:
    """One live view of a sweep: a bar in a terminal, plain lines always (readable in logs and CI)."""

    def __init__(self, title: str, total: int, workers: int, show: bool):
        self.title, self.total, self.workers, self.show = title, total, workers, show
        self.done = self.failed = 0
        self.durations: list[float] = []
        interactive = show and sys.stdout.isatty()
        # stdout: the workers' stderr goes to per-trial files, so nothing else writes across the bar
        self.bar = tqdm(total=total, desc=title, unit="trial", disable=not interactive, dynamic_ncols=True, file=sys.stdout)

    def eta_seconds(self, running: list[RunningJob], pending: int) -> Optional[float]:
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = time.monotonic()
        left = sum(max(0.0, mean - (now - job.started)) for job in running) + pending * mean
        return left / self.workers

    def status_text(self, running: list[RunningJob], pending: int) -> str:
        eta = self.eta_seconds(running, pending)
        eta_text = f"ETA {_duration(eta)}" if eta is not None else "ETA after the first trial"
        return f"done {self.done}/{self.total}, failed {self.failed}, running {len(running)} | {eta_text}"

    def update_running(self, running: list[RunningJob], pending: int) -> None:
        shown = ", ".join(f"{job.job.label} {job.epoch_text}" for job in running[:3])
        self.bar.set_postfix_str(f"{shown} | {self.status_text(running, pending)}")

    def finished(self, outcome: TrialOutcome, scores: str, running: list[RunningJob], pending: int) -> None:
        self.done += 1
        self.failed += outcome.status != "FINISHED"
        self.durations.append(outcome.seconds)
        self.bar.update(1)
        line = (
            f"[{self.done:>3}/{self.total}] {outcome.status:<8} {outcome.notebook.stem:<44} {scores} ({outcome.seconds:.0f}s)"
            f"  | {self.status_text(running, pending)}"
        )
        if self.show:
            self.bar.write(line, file=sys.stdout)
            sys.stdout.flush()

    def close(self) -> None:
        self.bar.close()


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class Scheduler:
    workers: int = 1
    trial_timeout: Optional[float] = None  # seconds per job
    threads: int = 1  # framework threads per worker
    display: Optional[Display] = None
    outcomes: list[TrialOutcome] = field(default_factory=list)

    # --- starting a job
    def _environment(self, job: Job) -> dict[str, str]:
        env = {
            **os.environ,
            **thread_environment(self.threads),
            tracking.ENV_RUN_ID: job.run_id,
            tracking.ENV_ROOT: str(tracking.project_root()),
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
            "PYTHONUNBUFFERED": "1",
        }
        for name, value in ((ENV_EPOCH_BUDGET, job.epoch_budget), (ENV_CHECKPOINT, job.checkpoint)):
            if value is None:
                env.pop(name, None)
            else:
                env[name] = str(value)
        return env

    def _start(self, job: Job) -> RunningJob:
        job.run_id = job.open_run()
        params_file = job.output.with_suffix(".params.json")
        params_file.write_text(json.dumps(job.trial.params.model_dump()), encoding="utf-8")
        for stale in (error_file(job.output), job.output.with_suffix(".log")):
            stale.unlink(missing_ok=True)
        with job.output.with_suffix(".stderr.log").open("ab") as stderr_log:
            process = subprocess.Popen(
                [sys.executable, "-m", "imagebench.worker", str(params_file), job.run_id, str(job.output)],
                env=self._environment(job), stdout=stderr_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=str(tracking.project_root()),
                start_new_session=True,  # Ctrl-C reaches the sweep only; it stops the workers itself
            )  # fmt: skip
        return RunningJob(job, process, time.monotonic())

    # --- watching it
    def _read_progress(self, running: RunningJob) -> None:
        log = running.job.output.with_suffix(".log")
        try:
            with log.open("r", encoding="utf-8", errors="replace") as handle:
                handle.seek(running.log_offset)
                text = handle.read()
                running.log_offset = handle.tell()
        except FileNotFoundError:
            return
        epochs = EPOCH_LINE.findall(text)
        if epochs:
            running.epoch_text = f"epoch {epochs[-1][0]}/{epochs[-1][1]}"

    def _failure_reason(self, running: RunningJob) -> Optional[str]:
        code = running.process.returncode
        if running.stop_reason:
            return running.stop_reason
        if code == 0:
            return None
        error = error_file(running.job.output)
        if error.exists():
            text = error.read_text(encoding="utf-8").strip()
            if "DeadKernelError" in text or "Kernel died" in text:
                text += " (the kernel process was killed: out of memory, a crash, or os._exit)"
            return text
        if code < 0:
            name = _signal_name(code)
            return f"worker killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        return f"worker exited with status {code}; see {running.job.output.with_suffix('.stderr.log')}"

    def _record(self, running: RunningJob) -> TrialOutcome:
        job, error = running.job, self._failure_reason(running)
        if job.output.exists():
            tracking.client().log_artifact(job.run_id, str(job.output), tracking.ARTIFACT_NOTEBOOK_DIR)
            tracking.set_tags(job.run_id, {tracking.TAG_NOTEBOOK: str(job.output)})
        status = tracking.run_status(job.run_id)
        if status == "RUNNING":  # the kernel died or never reached the trial code: close the record here
            status = "FAILED" if error else "FINISHED"
            tracking.end_run(job.run_id, status, error)
        elif error and status == "FINISHED":  # trained and logged, but a later cell raised
            tracking.set_tags(job.run_id, {tracking.TAG_ERROR: error})
        return TrialOutcome(job.trial, job.run_id, status, time.monotonic() - running.started, job.output, error or "")

    def _check_timeout(self, running: RunningJob) -> None:
        if self.trial_timeout and not running.stop_reason and time.monotonic() - running.started > self.trial_timeout:
            running.stop_reason = f"stopped after --trial-timeout {self.trial_timeout:g}s ({running.epoch_text})"
            _kill_tree(running.process)

    # --- the loop
    def run(self, jobs: list[Job], scores=lambda outcome: "") -> list[TrialOutcome]:
        """Run ``jobs`` (at most ``workers`` at once) and return their outcomes in finishing order."""
        pending, running, outcomes = deque(jobs), [], []
        try:
            while pending or running:
                while pending and len(running) < self.workers:
                    running.append(self._start(pending.popleft()))
                time.sleep(POLL_SECONDS)
                for job in list(running):
                    self._read_progress(job)
                    if job.process.poll() is None:
                        self._check_timeout(job)
                        continue
                    running.remove(job)
                    outcome = self._record(job)
                    outcomes.append(outcome)
                    if self.display:
                        self.display.finished(outcome, scores(outcome), running, len(pending))
                if self.display:
                    self.display.update_running(running, len(pending))
        except KeyboardInterrupt:
            self._stop_all(running, outcomes)
            raise
        finally:
            self.outcomes.extend(outcomes)
        return outcomes

    def _stop_all(self, running: list[RunningJob], outcomes: list[TrialOutcome]) -> None:
        """Interrupted: stop every worker, mark its run KILLED, keep its partial notebook."""
        for job in running:
            _kill_tree(job.process)
            job.stop_reason = "sweep interrupted"
            if tracking.run_status(job.job.run_id) == "RUNNING":
                tracking.end_run(job.job.run_id, "KILLED", "sweep interrupted")
            outcomes.append(self._record(job))
