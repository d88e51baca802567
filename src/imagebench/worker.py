"""One trial in its own process: ``python -m imagebench.worker PARAMS_JSON RUN_ID OUTPUT``.

The sweep starts one of these per trial, in a process group of its own, so that a trial can be
timed out or killed with its kernel, and several can run at once without sharing environment
variables or file descriptors. Exit status 0: the notebook ran to the end; 1: it raised (the reason
is in OUTPUT with suffix ``.error``).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from imagebench import tracking


def error_file(output: Path) -> Path:
    return output.with_suffix(".error")


def _error_text(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # papermill's PapermillExecutionError carries the notebook's own exception
        return f"{ename}: {evalue}"
    return f"{type(exc).__name__}: {exc}".strip()


def execute(params: dict, output: Path) -> int:
    """Run train.ipynb with ``params`` into ``output``; the kernel's stdout goes to OUTPUT.log."""
    import papermill

    notebook = tracking.project_root() / "notebooks" / "train.ipynb"
    with output.with_suffix(".log").open("w", encoding="utf-8") as log:
        try:
            papermill.execute_notebook(
                str(notebook), str(output), parameters=params, progress_bar=False, log_output=True,
                stdout_file=log, stderr_file=log, cwd=str(tracking.project_root()),
            )
        except Exception as exc:  # a failing trial is a result for the sweep to record, not a crash
            error_file(output).write_text(_error_text(exc), encoding="utf-8")
            return 1
    return 0


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


def main(argv: list[str]) -> int:
    params_path, _run_id, output = argv  # the run id travels in $IMAGEBENCH_RUN_ID; here for `ps`
    _exit_with_parent(os.getppid())
    params = json.loads(Path(params_path).read_text(encoding="utf-8"))
    return execute(params, Path(output))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
