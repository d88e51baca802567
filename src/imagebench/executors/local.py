"""The local executor: trial jobs on worker processes of this machine, N at a time.

Each of the N workers is ``python -m imagebench.executors.worker`` in a session of its own; it executes
train.ipynb with papermill for each job it is sent, in a kernel kept warm between trials of one
framework (see ``worker``). A job that hangs is stopped with its worker's process tree; a worker
that dies (its kernel killed by OOM, a crash) is noticed and its job reported with the reason; a
new worker takes the slot. TensorFlow and torch trials never share a kernel, so they can run side
by side. A Ray node runs its trials with this same executor (one slot per actor).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from imagebench import store
from imagebench.core.contract import ENV_ROOT, TRACKING_URI, last_progress
from imagebench.executors import Job, JobEnd
from imagebench.training.resources import thread_environment, threads_per_worker
from imagebench.executors.worker import error_file, status_file

LOW_DISK_BYTES = 1 << 20


def disk_full_note(folder: Path) -> str:
    """' (disk full: N bytes free on FOLDER)' when that is why writing failed, else ''."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" (disk full: {free} bytes free on {folder})" if free < LOW_DISK_BYTES else ""


@dataclass
class WorkerProcess:
    """A running ``imagebench.executors.worker``: it takes one job at a time on stdin."""

    process: subprocess.Popen
    log: Path
    framework: str = ""  # what its kernel last ran: the next trial of it skips the imports

    @classmethod
    def start(cls, root: Path, env: dict[str, str], log: Path, fresh_kernel: bool) -> "WorkerProcess":
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as worker_log:
            process = subprocess.Popen(
                [sys.executable, "-m", "imagebench.executors.worker", str(root), *(["--fresh-kernel"] if fresh_kernel else [])],
                env=env, stdout=worker_log, stderr=subprocess.STDOUT, stdin=subprocess.PIPE, cwd=str(root), text=True,
                start_new_session=True,  # Ctrl-C reaches the sweep only; it stops the workers itself
            )  # fmt: skip
        return cls(process, log)

    def alive(self) -> bool:
        return self.process.poll() is None

    def send(self, params_file: Path, run_id: str, output: Path, env: dict[str, Optional[str]]) -> None:
        """One job, in the format ``imagebench.executors.worker`` reads; it writes ``status_file(output)`` when done."""
        job = {"params": str(params_file), "run_id": run_id, "output": str(output), "env": env}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        """No more jobs: the worker shuts its kernel down and exits (killed if it does not)."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            kill_tree(self.process)


def kill_tree(process: subprocess.Popen) -> None:
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


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


@dataclass
class Assignment:
    """A job on a worker."""

    job: Job
    worker: WorkerProcess
    log_offset: int = 0
    epoch_text: str = "starting"
    stop_reason: str = ""  # set when we stop the worker ourselves (timeout, interrupt)

    def done(self) -> bool:
        return status_file(self.job.output).exists() or not self.worker.alive()

    def exit_code(self) -> Optional[int]:
        """The job's status (0 ran to the end, 1 raised), None if the worker died first."""
        try:
            return int(status_file(self.job.output).read_text(encoding="utf-8").strip())
        except (OSError, ValueError):
            return None

    def read_progress(self) -> str:
        log = self.job.output.with_suffix(".log")
        try:
            with log.open("r", encoding="utf-8", errors="replace") as handle:
                handle.seek(self.log_offset)
                text = handle.read()
                self.log_offset = handle.tell()
        except FileNotFoundError:
            return self.epoch_text
        progress = last_progress(text)
        if progress:
            self.epoch_text = f"epoch {progress[0]}/{progress[1]}"
        return self.epoch_text

    def failure_reason(self) -> Optional[str]:
        """None when the notebook ran to its end, else why not, in words a user can act on."""
        if self.stop_reason:
            return self.stop_reason
        code = self.exit_code()
        if code == 0:
            return None
        error = error_file(self.job.output)
        if error.exists():
            text = error.read_text(encoding="utf-8").strip()
            if "DeadKernelError" in text or "Kernel died" in text:
                text += " (the kernel process was killed: out of memory, a crash, or os._exit)"
            return text
        returncode = self.worker.process.poll()
        if returncode is not None and returncode < 0:
            name = _signal_name(returncode)
            return f"worker killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
        full = disk_full_note(self.job.output.parent)
        return f"worker exited with status {returncode}{full}; see {self.worker.log}"


@dataclass
class LocalExecutor:
    workers: int = 1
    threads: int = 1  # framework threads per worker
    fresh_kernels: bool = False  # a new kernel for every job instead of one kept warm per worker
    root: Optional[Path] = None  # the project root the workers run in (default: this project's)
    environment: dict[str, str] = field(default_factory=dict)  # on top of this process's environment
    where: str = ""  # named in each JobEnd (a Ray node says which node it is)
    idle: list[WorkerProcess] = field(default_factory=list)
    running: dict[str, Assignment] = field(default_factory=dict)  # by job label
    spawned: int = 0  # workers started so far (names their logs)

    @classmethod
    def from_options(cls, options, settings: dict) -> "LocalExecutor":
        """``settings``: this executor's own options (``EXECUTORS``): none."""
        return cls(workers=options.workers or 1, threads=threads_per_worker(options.workers or 1),
                   fresh_kernels=options.fresh_kernels)  # fmt: skip

    @property
    def slots(self) -> int:
        return self.workers

    def _root(self) -> Path:
        return self.root or store.project_root()

    def _worker_environment(self) -> dict[str, str]:
        return {
            **os.environ,
            **thread_environment(self.threads),
            ENV_ROOT: str(self._root()),
            TRACKING_URI: store.tracking_uri(),
            "PYTHONUNBUFFERED": "1",
            **self.environment,
        }

    def _spawn_worker(self, folder: Path) -> WorkerProcess:
        self.spawned += 1
        log = folder / f"worker-{self.spawned}-{os.getpid()}.log"
        return WorkerProcess.start(self._root(), self._worker_environment(), log, self.fresh_kernels)

    def _worker_for(self, job: Job) -> WorkerProcess:
        """An idle worker whose kernel already runs this framework, else any idle one, else a new one."""
        framework = job.trial.params.framework
        self.idle = [worker for worker in self.idle if worker.alive()]
        for worker in self.idle:
            if worker.framework == framework:
                self.idle.remove(worker)
                return worker
        return self.idle.pop(0) if self.idle else self._spawn_worker(job.output.parent)

    # --- the interface
    def free_slots(self) -> int:
        return self.workers - len(self.running)

    def submit(self, job: Job) -> None:
        params_file = job.output.with_suffix(".params.json")
        params_file.write_text(json.dumps(job.trial.params.model_dump()), encoding="utf-8")
        for stale in (error_file(job.output), status_file(job.output), job.output.with_suffix(".log")):
            stale.unlink(missing_ok=True)
        worker = self._worker_for(job)
        worker.framework = job.trial.params.framework
        worker.send(params_file, job.run_id, job.output, job.environment())
        self.running[job.label] = Assignment(job, worker)

    def finished(self) -> list[tuple[Job, JobEnd]]:
        ended = []
        for label, assignment in list(self.running.items()):
            if assignment.done():
                del self.running[label]
                ended.append((assignment.job, self._release(assignment)))
        return ended

    def _release(self, assignment: Assignment) -> JobEnd:
        """Back to the idle pool if it finished its job; a worker that died or was killed is dropped."""
        end = JobEnd(assignment.failure_reason(), self.where)
        if assignment.worker.alive() and assignment.exit_code() is not None and not assignment.stop_reason:
            self.idle.append(assignment.worker)
        else:
            kill_tree(assignment.worker.process)
        return end

    def progress(self, job: Job) -> str:
        assignment = self.running.get(job.label)
        return assignment.read_progress() if assignment else ""

    def stop(self, job: Job, reason: str) -> None:
        assignment = self.running.get(job.label)
        if assignment and not assignment.stop_reason:
            assignment.stop_reason = reason
            kill_tree(assignment.worker.process)

    def stop_all(self, reason: str) -> list[tuple[Job, JobEnd]]:
        for assignment in self.running.values():
            self.stop(assignment.job, reason)
        ended = [(assignment.job, self._release(assignment)) for assignment in self.running.values()]
        self.running.clear()
        return ended

    def close(self) -> None:
        for worker in self.idle:
            worker.close()
        self.idle.clear()

    def wait(self, poll_seconds: float = 0.2) -> list[tuple[Job, JobEnd]]:
        """Block until a running job ends (a Ray actor serves one job this way)."""
        while self.running:
            ended = self.finished()
            if ended:
                return ended
            time.sleep(poll_seconds)
        return []
