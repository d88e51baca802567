"""A sweep's worker: ``python -m imagebench.executors.worker ROOT [--fresh-kernel]``, serving trial jobs.

The sweep starts one worker per slot, in a process group of its own, and sends it jobs on stdin, one
JSON line each: ``{"params": PATH, "run_id": ID, "output": NOTEBOOK, "env": {NAME: VALUE or null}}``.
The worker executes train.ipynb with papermill for each and writes ``OUTPUT.status`` (``0``: the
notebook ran to the end; ``1``: it raised, the reason in ``OUTPUT.error``) when the job is done.

The kernel is kept warm between jobs: importing torch/timm or TensorFlow, MLflow and the store's
schema check cost ~10 s per fresh kernel here, more than a short trial trains. Trial state does
not leak: every trial seeds every RNG and sets its framework's global settings (``configure``), the
notebook redefines every variable it uses, and this job's environment (run id, epoch budget,
checkpoint) is set by a first cell. The kernel is replaced after any failure, when the framework
changes (TensorFlow and torch never share a process), when it holds more than
``$IMAGEBENCH_KERNEL_MAX_MB`` (default 4096), and after every job with ``--fresh-kernel``.
A timeout or a dead sweep kills the worker with its kernel.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ENVIRONMENT_TAG = "injected-environment"
WARM_ENGINE = "imagebench-warm"  # papermill engine name of the worker's kept kernel
SAVE_EVERY_SECONDS = 2.0  # the output notebook is rewritten at most this often while a job runs
# TensorFlow keeps ~110 MB per EfficientNet-B0 trial in a process even after clear_session and
# gc (measured: RSS 1411 -> 1850 MB over 5 trials), so a kept kernel is replaced once it holds more
from imagebench.core.contract import ENV_KERNEL_MAX_MB, ENV_RECORD_DIR  # noqa: E402
DEFAULT_KERNEL_MAX_MB = 4096.0
TRIAL_CELL_TAG = "trial"  # train.ipynb's cell that runs the trial: the rest of a job is its cost
COSTS_FILE = "sweep_costs.json"  # in the trial's record folder: the job's costs, for the sweep to record


def error_file(output: Path) -> Path:
    return output.with_suffix(".error")


def status_file(output: Path) -> Path:
    return output.with_suffix(".status")


def _error_text(exc: BaseException, output: Path) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # papermill's PapermillExecutionError carries the notebook's own exception
        return f"{ename}: {evalue}"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # papermill saving the notebook as it runs
        return (f"disk full while writing {exc.filename or output} ({exc.strerror}): free space on that disk and run "
                f"the sweep again (finished trials are skipped)")  # fmt: skip
    return f"{type(exc).__name__}: {exc}".strip()


def _environment_cell(env: dict[str, Optional[str]]):
    """A first code cell setting this job's environment in the (shared) kernel; None removes a name."""
    import nbformat

    lines = ["# Set by the sweep for this trial (the kernel serves several trials in turn)", "import os"]
    for name, value in sorted(env.items()):
        lines.append(f"os.environ[{name!r}] = {value!r}" if value is not None else f"os.environ.pop({name!r}, None)")
    return nbformat.v4.new_code_cell("\n".join(lines), metadata={"tags": [ENVIRONMENT_TAG]})


def _notebook_for(root: Path, env: dict[str, Optional[str]]):
    import nbformat

    notebook = nbformat.read(root / "notebooks" / "train.ipynb", as_version=4)
    notebook.cells.insert(0, _environment_cell(env))
    return notebook


@dataclass
class JobCosts:
    """Where a job's time around the trial went (``metrics.SWEEP_COSTS``), as the worker saw it."""

    started: float = field(default_factory=time.perf_counter)
    kernel: Optional[float] = None  # until the first cell started: the kernel's start, or its reuse
    notebook: float = 0.0  # writing the output notebook
    trial: Optional[float] = None  # the trial cell, start to end
    _cell_started: float = 0.0

    def watch_cells(self, nb_man) -> None:
        """Time the cells through papermill's hooks (on this job's manager; the engine removes them)."""
        cell_start, cell_complete = nb_man.cell_start, nb_man.cell_complete

        def started(cell, *args, **kwargs):
            self._cell_started = time.perf_counter()
            if self.kernel is None:
                self.kernel = self._cell_started - self.started
            return cell_start(cell, *args, **kwargs)

        def completed(cell, *args, **kwargs):
            cell_complete(cell, *args, **kwargs)
            if TRIAL_CELL_TAG in cell.get("metadata", {}).get("tags", []):
                self.trial = time.perf_counter() - self._cell_started

        nb_man.cell_start, nb_man.cell_complete = started, completed

    def metrics(self) -> dict[str, float]:
        """Seconds per ``metrics.SWEEP_COSTS`` key; papermill's is the job's rest (none if the trial
        cell or the kernel's start was never seen: a notebook without the trial's tag, a dead kernel)."""
        from imagebench.core import metrics

        ended = time.perf_counter()
        values = {metrics.NOTEBOOK_SECONDS.key: self.notebook}
        if self.kernel is not None:
            values[metrics.KERNEL_SECONDS.key] = self.kernel
            if self.trial is not None:
                values[metrics.PAPERMILL_SECONDS.key] = max(0.0, ended - self.started - self.kernel - self.notebook - self.trial)
        return values

    def write(self, env: dict[str, Optional[str]]) -> None:
        """Into the trial's record folder (it travels back from a Ray node with the record)."""
        folder = env.get(ENV_RECORD_DIR)
        if folder:
            try:
                Path(folder).mkdir(parents=True, exist_ok=True)
                (Path(folder) / COSTS_FILE).write_text(json.dumps(self.metrics()), encoding="utf-8")
            except OSError:  # a full disk: the costs are the one thing of the record not worth failing for
                pass


class WarmKernel:
    """One Jupyter kernel kept between jobs of the same framework.

    nbclient starts it (its own AsyncKernelManager, so its dead-kernel checks work) on the first
    job; later jobs of the same framework are handed the same manager.
    """

    def __init__(self, root: Path):
        self.root, self.manager, self.client, self.framework = root, None, None, None

    def _call(self, method: str, **kwargs):
        """Call an AsyncKernelManager method from this synchronous loop."""
        from jupyter_core.utils import ensure_async, run_sync

        async def call():
            return await ensure_async(getattr(self.manager, method)(**kwargs))

        return run_sync(call)()

    def _alive(self) -> bool:
        return self.manager is not None and bool(self._call("is_alive"))

    def manager_for(self, framework: str):
        """The kept kernel manager if it runs ``framework``, else None (a new kernel is started)."""
        if self.framework != framework or not self._alive():
            self.shutdown()
            self.framework = framework
        return self.manager

    def shutdown(self) -> None:
        if self.client is not None:
            self.client.stop_channels()
        if self.manager is not None:
            try:
                self._call("shutdown_kernel", now=True)
            except Exception:  # already dead: nothing left to stop
                pass
        self.manager, self.client, self.framework = None, None, None


def _execute(kernel: WarmKernel, job: dict) -> int:
    """Run one job's notebook in the warm kernel; the kernel's output goes to OUTPUT.log."""
    import papermill

    costs = JobCosts()
    output = Path(job["output"])
    params = json.loads(Path(job["params"]).read_text(encoding="utf-8"))
    notebook = _notebook_for(kernel.root, job["env"])
    with output.with_suffix(".log").open("w", encoding="utf-8") as log:
        try:
            engine = _warm_engine(kernel, params.get("framework", ""), costs)
            papermill.execute_notebook(
                notebook, str(output), parameters=params, engine_name=engine, progress_bar=False,
                log_output=True, stdout_file=log, stderr_file=log, cwd=str(kernel.root),
            )  # fmt: skip
        except Exception as exc:  # a failing trial is a result for the sweep to record, not a crash
            try:
                error_file(output).write_text(_error_text(exc, output), encoding="utf-8")
            except OSError:  # the disk is full: the sweep finds the reason itself when this worker exits
                pass
            return 1
        finally:
            costs.write(job["env"])
    return 0


def _save_at_most_every(nb_man, seconds: float) -> None:
    """papermill writes the output notebook before and after every cell (~20 writes, ~0.1 s a short
    trial waits for); while it runs, the notebook on disk only matters to a reader if the worker is
    killed (then it is at most ``seconds`` behind; the job's log has every line)."""
    save, last = nb_man.save, [float("-inf")]

    def throttled(**kwargs) -> None:
        if time.monotonic() - last[0] >= seconds:
            save(**kwargs)
            last[0] = time.monotonic()

    nb_man.save = throttled


def _warm_engine_class():
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine
    from papermill.log import logger

    class Engine(NBClientEngine):
        """papermill's nbclient engine, executing in the worker's kept kernel instead of a new one."""

        kernel: WarmKernel = None
        costs: JobCosts = None  # this job's

        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None, stderr_file=None,
                                     start_timeout=60, execution_timeout=None, **kwargs):  # fmt: skip
            client = PapermillNotebookClient(
                nb_man, km=cls.kernel.manager_for(cls.framework), kernel_name=kernel_name, log=logger,
                log_output=log_output, stdout_file=stdout_file, stderr_file=stderr_file, startup_timeout=start_timeout,
                timeout=execution_timeout,
            )  # fmt: skip
            # The connection is kept too: a new client waits for the kernel to be ready, which ends
            # with 0.2 s of listening for stray output (jupyter_client), on every job. Output left
            # from an earlier job is ignored by nbclient (it keeps only replies to its own requests).
            client.kc = cls.kernel.client if client.km is not None else None
            _save_at_most_every(nb_man, SAVE_EVERY_SECONDS)
            cls.costs.watch_cells(nb_man)
            try:
                executed = client.execute(cleanup_kc=False)  # the kernel outlives this job
            except BaseException:
                del nb_man.save  # papermill's own again: its save in notebook_complete is the notebook's last
                raise
            else:
                # papermill.execute_notebook writes the finished notebook itself right after the engine
                # (or raise_for_execution_errors does): notebook_complete's save would write it twice
                nb_man.save = lambda **kwargs: None
                return executed
            finally:
                del nb_man.cell_start, nb_man.cell_complete
                cls.kernel.manager, cls.kernel.client = client.km, client.kc  # started on first use, kept

    return Engine


_engine = None


def _time_notebook_writes() -> None:
    """Every write of an output notebook by papermill (as cells run, at their end, and once more
    after its engine) is counted in the job's ``notebook`` cost."""
    import papermill.engines
    import papermill.execute

    def timed(write):
        def write_and_count(*args, **kwargs):
            started = time.perf_counter()
            try:
                return write(*args, **kwargs)
            finally:
                if _engine.costs is not None:
                    _engine.costs.notebook += time.perf_counter() - started

        return write_and_count

    for module in (papermill.engines, papermill.execute):
        module.write_ipynb = timed(module.write_ipynb)


def _warm_engine(kernel: WarmKernel, framework: str, costs: JobCosts) -> str:
    """papermill's engine name for the worker's kernel (the class is made on first use: papermill
    is imported only when a job arrives)."""
    global _engine
    if _engine is None:
        from papermill.engines import papermill_engines

        _engine = _warm_engine_class()
        papermill_engines.register(WARM_ENGINE, _engine)
        _time_notebook_writes()
    _engine.kernel, _engine.framework, _engine.costs = kernel, framework, costs
    return WARM_ENGINE


def kernel_memory_limit_mb() -> float:
    text = os.environ.get(ENV_KERNEL_MAX_MB, "").strip()
    try:
        value = float(text) if text else DEFAULT_KERNEL_MAX_MB
    except ValueError:
        value = -1.0
    if value <= 0:
        from imagebench.core.params import ParamsError

        raise ParamsError(f"{ENV_KERNEL_MAX_MB}={text!r} is invalid: give the megabytes a kept kernel may hold (e.g. 4096)")
    return value


def _kernel_memory_mb() -> float:
    """Resident memory of this worker's children: its kernel and whatever the kernel started."""
    import psutil

    total = 0
    for child in psutil.Process().children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def _exit_with_parent(parent_pid: int) -> None:
    """If the sweep dies (even by SIGKILL), take the kernel down and exit: no orphan trial keeps
    training and writing into a run that the next sweep will mark KILLED and run again."""

    def watch() -> None:
        import psutil

        while os.getppid() == parent_pid:
            time.sleep(1.0)
        for child in psutil.Process().children(recursive=True):
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        os._exit(3)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def serve(root: Path, fresh_kernel: bool, jobs=sys.stdin) -> int:
    kernel = WarmKernel(root)
    memory_limit = kernel_memory_limit_mb()
    _exit_with_parent(os.getppid())
    try:
        for line in jobs:
            if not line.strip():
                continue
            job = json.loads(line)
            code = _execute(kernel, job)
            # after a failure the kernel's state is unknown, and one grown too big is slow: both are replaced
            if code != 0 or fresh_kernel or _kernel_memory_mb() > memory_limit:
                kernel.shutdown()
            status_file(Path(job["output"])).write_text(str(code), encoding="utf-8")
    finally:
        kernel.shutdown()
    return 0


def main(argv: list[str]) -> int:
    root = Path(argv[0])
    return serve(root, fresh_kernel="--fresh-kernel" in argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
