"""Run a planned sweep: one papermill-executed train.ipynb per trial, each an MLflow child run.

The sweep creates each child run before starting the notebook and hands its id to the kernel
(``$IMAGEBENCH_RUN_ID``), so a trial whose kernel dies is still on record: the sweep marks it
FAILED with the reason and attaches the partial notebook. One bad trial never stops the sweep.
"""

from __future__ import annotations

import os
import re
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

from tqdm.auto import tqdm

from imagebench import tracking
from imagebench.grid import SweepPlan, Trial
from imagebench.trial import trial_tags

EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)")


def train_notebook() -> Path:
    return tracking.project_root() / "notebooks" / "train.ipynb"


def results_dir(experiment: str) -> Path:
    return tracking.project_root() / "results" / experiment


@dataclass
class TrialOutcome:
    trial: Trial
    run_id: str
    status: str
    seconds: float
    notebook: Path
    error: str = ""


@dataclass
class SweepSummary:
    experiment: str
    parent_run_id: str
    outcomes: list[TrialOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status != "FINISHED"]

    def text(self) -> str:
        lines = [
            f"sweep '{self.experiment}': {len(self.outcomes) - len(self.failed)} finished, {len(self.failed)} failed "
            f"of {len(self.outcomes)} trials in {self.seconds / 60:.1f} min (parent run {self.parent_run_id})"
        ]
        for outcome in self.failed:
            lines.append(f"  FAILED {outcome.trial.name}: {outcome.error or outcome.status}  notebook: {outcome.notebook}")
        return "\n".join(lines)


class KernelOutput:
    """File-like sink for the kernel's stdout: keeps a log per trial and feeds epoch lines to the bar."""

    def __init__(self, log_path: Path, bar: Optional[tqdm], trial: Trial):
        self.log = log_path.open("w", encoding="utf-8")
        self.bar, self.trial = bar, trial

    def write(self, text: str) -> int:
        self.log.write(text)
        for line in text.splitlines():
            match = EPOCH_LINE.match(line)
            if match and self.bar is not None:
                self.bar.set_postfix_str(f"{self.trial.name} epoch {match.group(1)}/{match.group(2)}")
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def close(self) -> None:
        self.log.close()


@contextmanager
def _kernel_environment(run_id: str) -> Iterator[None]:
    """The kernel inherits this process's environment: point it at our run and our store."""
    saved = {key: os.environ.get(key) for key in (tracking.ENV_RUN_ID, "MLFLOW_TRACKING_URI", tracking.ENV_ROOT)}
    os.environ.update(
        {tracking.ENV_RUN_ID: run_id, "MLFLOW_TRACKING_URI": tracking.tracking_uri(), tracking.ENV_ROOT: str(tracking.project_root())}
    )
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _process_stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 at ``path`` while a kernel starts and runs.

    Kernels inherit the sweep's stderr, and TensorFlow's C++ start-up lines and ipykernel's notices
    are written straight to it; they belong in the trial's log, not across the sweep's display.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _error_text(exc: BaseException) -> str:
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    if ename:  # papermill's PapermillExecutionError carries the notebook's own exception
        return f"{ename}: {evalue}"
    return f"{type(exc).__name__}: {exc}".strip()


def execute_trial(trial: Trial, run_id: str, output: Path, bar: Optional[tqdm] = None) -> Optional[str]:
    """Execute train.ipynb for ``trial`` into ``output``; return the error text, or None on success."""
    import papermill

    sink = KernelOutput(output.with_suffix(".log"), bar, trial)
    try:
        with _kernel_environment(run_id), _process_stderr_to(output.with_suffix(".stderr.log")):
            papermill.execute_notebook(
                str(train_notebook()),
                str(output),
                parameters=trial.params.model_dump(),
                progress_bar=False,
                log_output=True,
                stdout_file=sink,
                stderr_file=sink,
                cwd=str(tracking.project_root()),
            )
        return None
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # a failing trial is a result, not a reason to stop the sweep
        return _error_text(exc)
    finally:
        sink.close()


def _record_outcome(trial: Trial, run_id: str, output: Path, error: Optional[str], started: float) -> TrialOutcome:
    if output.exists():
        tracking.client().log_artifact(run_id, str(output), tracking.ARTIFACT_NOTEBOOK_DIR)
        tracking.set_tags(run_id, {tracking.TAG_NOTEBOOK: str(output)})
    status = tracking.run_status(run_id)
    if status == "RUNNING":  # the kernel died or never reached the trial code: close the record ourselves
        status = "FAILED" if error else "FINISHED"
        tracking.end_run(run_id, status, error)
    elif error and status == "FINISHED":  # the trial finished but a later display cell raised
        tracking.set_tags(run_id, {tracking.TAG_ERROR: error})
    return TrialOutcome(trial, run_id, status, time.perf_counter() - started, output, error or "")


def _report_line(position: int, total: int, outcome: TrialOutcome) -> str:
    metrics = tracking.client().get_run(outcome.run_id).data.metrics
    scores = ""
    if outcome.status == "FINISHED":
        scores = f"val acc {metrics.get('best/val_accuracy', float('nan')):.4f}  test acc {metrics.get('test/accuracy', float('nan')):.4f}"
    else:
        scores = outcome.error[:120]
    return f"[{position:>3}/{total}] {outcome.status:<8} {outcome.trial.name:<40} {scores}  ({outcome.seconds:.0f}s)"


def run_sweep(plan: SweepPlan, show_progress: bool = True) -> SweepSummary:
    runs_dir = results_dir(plan.experiment) / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    parent_run_id = tracking.start_sweep_run(plan.experiment, plan.source)
    summary = SweepSummary(plan.experiment, parent_run_id)
    sweep_started = time.perf_counter()
    # stdout, not stderr: the kernels' stderr is redirected into the trial logs while they run.
    bar = tqdm(
        total=len(plan.trials), desc=f"sweep {plan.experiment}", unit="trial", disable=not show_progress,
        dynamic_ncols=True, file=sys.stdout,
    )
    run_id = None
    try:
        for position, trial in enumerate(plan.trials, start=1):
            run_id = tracking.create_trial_run(plan.experiment, trial.name, trial_tags(trial.params, trial.dataset_fingerprint), parent_run_id)
            started = time.perf_counter()
            output = runs_dir / f"{trial.name}.ipynb"
            bar.set_postfix_str(f"{trial.name} starting")
            error = execute_trial(trial, run_id, output, bar)
            outcome = _record_outcome(trial, run_id, output, error, started)
            summary.outcomes.append(outcome)
            run_id = None
            bar.update(1)
            bar.write(_report_line(position, len(plan.trials), outcome))
    except KeyboardInterrupt:
        if run_id is not None:
            tracking.end_run(run_id, "KILLED", "sweep interrupted")
        tracking.end_run(parent_run_id, "KILLED", "sweep interrupted")
        raise
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - sweep_started
    tracking.log_metrics(
        parent_run_id,
        {"sweep/trials": len(summary.outcomes), "sweep/failed": len(summary.failed), "sweep/minutes": summary.seconds / 60},
    )
    tracking.end_run(parent_run_id, "FINISHED")
    return summary

