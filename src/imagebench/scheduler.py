"""Run trial jobs on worker processes, N at a time, with timeouts, failure isolation and a live display.

Each of the N workers is ``python -m imagebench.worker`` in a session of its own; it executes
train.ipynb with papermill for each job it is sent, in a kernel kept warm between trials of one
framework (see ``worker``). A trial that hangs, exhausts memory or kills its kernel is stopped or
noticed here and recorded FAILED with the reason; its worker is replaced and the other trials go
on. TensorFlow and torch trials never share a kernel, so they can run side by side.
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

from imagebench import record, tracking
from imagebench.grid import Trial
from imagebench.resources import thread_environment
from imagebench.trial import ENV_CHECKPOINT, ENV_EPOCH_BUDGET
from imagebench.worker import error_file, status_file

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)", re.MULTILINE)
POLL_SECONDS = 0.5
JOURNALED = "JOURNALED"  # outcome of a job that ended while the store was down: its record is in its journal
LOW_DISK_BYTES = 1 << 20


def disk_full_note(folder: Path) -> str:
    """' (disk full: N bytes free on FOLDER)' when that is why writing failed, else ''."""
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" (disk full: {free} bytes free on {folder})" if free < LOW_DISK_BYTES else ""


def _without_store_error(error: Optional[str]) -> Optional[str]:
    """A trial that raised only because the store was down did not fail: its journal holds its real end."""
    return None if error and error.startswith(tracking.StoreUnavailable.__name__) else error


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


@dataclass
class TrialOutcome:
    trial: Trial
    run_id: str
    status: str
    seconds: float
    notebook: Path
    error: str = ""


@dataclass
class WorkerProcess:
    """A running ``imagebench.worker``: it takes one job at a time on stdin."""

    process: subprocess.Popen
    log: Path
    framework: str = ""  # what its kernel last ran: the next trial of it skips the imports

    @classmethod
    def start(cls, root: Path, env: dict[str, str], log: Path, fresh_kernel: bool) -> "WorkerProcess":
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as worker_log:
            process = subprocess.Popen(
                [sys.executable, "-m", "imagebench.worker", str(root), *(["--fresh-kernel"] if fresh_kernel else [])],
                env=env, stdout=worker_log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, cwd=str(root), text=True,
                start_new_session=True,  # Ctrl-C reaches the sweep only; it stops the workers itself
            )  # fmt: skip
        return cls(process, log)

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, params_file: Path, run_id: str, output: Path, env: dict[str, Optional[str]]) -> None:
        """One job, in the format ``imagebench.worker`` reads; it writes ``status_file(output)`` when done."""
        job = {"params": str(params_file), "run_id": run_id, "output": str(output), "env": env}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        """No more jobs: the worker shuts its kernel down and exits (killed if it does not)."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            _kill_tree(self.process)


@dataclass
class RunningJob:
    job: Job
    worker: WorkerProcess
    started: float
    log_offset: int = 0
    epoch_text: str = "starting"
    stop_reason: str = ""  # set when we stop the worker ourselves (timeout)

    def done(self) -> bool:
        return status_file(self.job.output).exists() or not self.worker.alive()

    def exit_code(self) -> Optional[int]:
        """The job's status (0 ran to the end, 1 raised), None if the worker died first."""
        try:
            return int(status_file(self.job.output).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None


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
    fresh_kernels: bool = False  # a new kernel for every job instead of one kept warm per worker
    store_error: Optional[tracking.StoreUnavailable] = None  # the MLflow store stayed down: start nothing more
    display: Optional[Display] = None
    outcomes: list[TrialOutcome] = field(default_factory=list)
    idle: list[WorkerProcess] = field(default_factory=list)
    spawned: int = 0  # workers started so far (names their logs)

    # --- starting a job
    def _worker_environment(self) -> dict[str, str]:
        return {
            **os.environ,
            **thread_environment(self.threads),
            tracking.ENV_ROOT: str(tracking.project_root()),
            "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
            "PYTHONUNBUFFERED": "1",
        }

    def _spawn_worker(self, folder: Path) -> WorkerProcess:
        self.spawned += 1
        log = folder / f"worker-{self.spawned}-{os.getpid()}.log"
        return WorkerProcess.start(tracking.project_root(), self._worker_environment(), log, self.fresh_kernels)

    def _worker_for(self, job: Job) -> WorkerProcess:
        """An idle worker whose kernel already runs this framework, else any idle one, else a new one."""
        framework = job.trial.params.framework
        self.idle = [worker for worker in self.idle if worker.alive()]
        for worker in self.idle:
            if worker.framework == framework:
                self.idle.remove(worker)
                return worker
        return self.idle.pop(0) if self.idle else self._spawn_worker(job.output.parent)

    def _start(self, job: Job) -> RunningJob:
        job.run_id = job.open_run()
        params_file = job.output.with_suffix(".params.json")
        params_file.write_text(json.dumps(job.trial.params.model_dump()), encoding="utf-8")
        for stale in (error_file(job.output), status_file(job.output), job.output.with_suffix(".log")):
            stale.unlink(missing_ok=True)
        worker = self._worker_for(job)
        worker.framework = job.trial.params.framework
        budget, checkpoint = job.epoch_budget, job.checkpoint
        env = {tracking.ENV_RUN_ID: job.run_id, ENV_EPOCH_BUDGET: None if budget is None else str(budget),
               ENV_CHECKPOINT: None if checkpoint is None else str(checkpoint),
               record.ENV_RECORD_DIR: str(job.record_dir)}  # fmt: skip
        worker.send(params_file, job.run_id, job.output, env)
        return RunningJob(job, worker, time.monotonic())

    def _release(self, running: RunningJob) -> None:
        """Back to the idle pool if it finished its job; a worker that died or was killed is dropped."""
        if running.worker.alive() and running.exit_code() is not None and not running.stop_reason:
            self.idle.append(running.worker)
        else:
            _kill_tree(running.worker.process)

    def close(self) -> None:
        for worker in self.idle:
            worker.close()
        self.idle.clear()

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
        if running.stop_reason:
            return running.stop_reason
        code = running.exit_code()
        if code == 0:
            return None
        error = error_file(running.job.output)
        if error.exists():
            text = error.read_text(encoding="utf-8").strip()
            if "DeadKernelError" in text or "Kernel died" in text:
                text += " (the kernel process was killed: out of memory, a crash, or os._exit)"
            return text
        returncode = running.worker.process.poll()
        if returncode is not None and returncode < 0:
            name = _signal_name(returncode)
            return f"worker killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        full = disk_full_note(running.job.output.parent)
        return f"worker exited with status {returncode}{full}; see {running.worker.log}"

    def _record(self, running: RunningJob) -> TrialOutcome:
        """Close the job's record in the store; while the store is down, in the trial's journal."""
        error = self._failure_reason(running)
        if self.store_error is None:
            try:
                return self._record_in_store(running, error)
            except tracking.StoreUnavailable as exc:
                self.store_error = exc  # no further job starts; those running finish into their journals
        return self._record_in_journal(running, error)

    def _record_in_store(self, running: RunningJob, error: Optional[str]) -> TrialOutcome:
        job = running.job
        journal = job.record_dir / record.JOURNAL
        if journal.is_file():  # the store was down during the trial and answers again: complete the record now
            record.relog(journal)
            error = _without_store_error(error)
        problem = notebook_problem(job.output)
        if problem is None:
            tracking.client().log_artifact(job.run_id, str(job.output), tracking.ARTIFACT_NOTEBOOK_DIR)
            tracking.set_tags(job.run_id, {tracking.TAG_NOTEBOOK: str(job.output)})
        elif job.output.exists() or job.output.is_symlink():
            error = f"{error}; {problem}" if error else problem
        status = tracking.run_status(job.run_id)
        if status == "RUNNING":  # the kernel died or never reached the trial code: close the record here
            status = "FAILED" if error else "FINISHED"
            tracking.end_run(job.run_id, status, error)
        elif error and status == "FINISHED":  # trained and logged, but a later cell raised
            tracking.set_tags(job.run_id, {tracking.TAG_ERROR: error})
        return TrialOutcome(job.trial, job.run_id, status, time.monotonic() - running.started, job.output, error or "")

    def _record_in_journal(self, running: RunningJob, error: Optional[str]) -> TrialOutcome:
        """The store is down: the notebook and, if the trial did not record its own end, the
        outcome go to the trial's journal, replayed later by ``imagebench relog``."""
        job = running.job
        recorder = record.RunRecorder(job.run_id, job.record_dir, self.store_error)
        if notebook_problem(job.output) is None:
            recorder.log_artifact(job.output, tracking.ARTIFACT_NOTEBOOK_DIR)
            recorder.set_tags({tracking.TAG_NOTEBOOK: str(job.output)})
        error = _without_store_error(error)  # the outage is said once, in the sweep's summary
        if not record.journal_has_end(job.record_dir):
            recorder.end("FAILED" if error else "FINISHED", error)
        note = f"record kept in {recorder.journal} (store unavailable)"
        return TrialOutcome(job.trial, job.run_id, JOURNALED, time.monotonic() - running.started, job.output,
                            f"{error}; {note}" if error else note)  # fmt: skip

    def _check_timeout(self, running: RunningJob) -> None:
        if self.trial_timeout and not running.stop_reason and time.monotonic() - running.started > self.trial_timeout:
            running.stop_reason = f"stopped after --trial-timeout {self.trial_timeout:g}s ({running.epoch_text})"
            _kill_tree(running.worker.process)

    # --- the loop
    def run(self, jobs: list[Job], scores=lambda outcome: "") -> list[TrialOutcome]:
        """Run ``jobs`` (at most ``workers`` at once) and return their outcomes in finishing order.

        If the MLflow store stays down, no further job starts; running ones finish into their
        journals, then ``StoreUnavailable`` is raised (the jobs not started are simply not run).
        """
        pending, running, outcomes = deque(jobs), [], []
        try:
            while running or (pending and self.store_error is None):
                self._start_jobs(pending, running)
                time.sleep(POLL_SECONDS)
                for job in list(running):
                    self._read_progress(job)
                    if not job.done():
                        self._check_timeout(job)
                        continue
                    running.remove(job)
                    self._release(job)
                    outcome = self._record(job)
                    outcomes.append(outcome)
                    if self.display:
                        shown = scores(outcome) if self.store_error is None else outcome.error
                        self.display.finished(outcome, shown, running, len(pending))
                if self.display:
                    self.display.update_running(running, len(pending))
        except KeyboardInterrupt:
            self._stop_all(running, outcomes)
            raise
        finally:
            self.outcomes.extend(outcomes)
            self.close()
        if self.store_error is not None:
            raise self.store_error
        return outcomes

    def _start_jobs(self, pending: deque, running: list[RunningJob]) -> None:
        while pending and len(running) < self.workers and self.store_error is None:
            try:
                running.append(self._start(pending[0]))
                pending.popleft()
            except tracking.StoreUnavailable as exc:  # its run could not be created: the job never started
                self.store_error = exc

    def _stop_all(self, running: list[RunningJob], outcomes: list[TrialOutcome]) -> None:
        """Interrupted: stop every worker, mark its run KILLED, keep its partial notebook."""
        for job in running:
            _kill_tree(job.worker.process)
            job.stop_reason = "sweep interrupted"
            if tracking.run_status(job.job.run_id) == "RUNNING":
                tracking.end_run(job.job.run_id, "KILLED", "sweep interrupted")
            outcomes.append(self._record(job))
