"""Run a planned sweep: resume what exists, pick trials by strategy, execute them, repeat the leaders.

- **Resume**: a trial whose fingerprint already has a FINISHED child run (trained to the budget
  asked) is skipped; FAILED and KILLED ones run again; runs left RUNNING by a sweep that died are
  marked KILLED first. The parent run is reused. ``rerun=True`` runs everything again.
- **Strategies** (``strategies``, a registry): ``grid``, ``random:K``, ``halving``.
- **Repeats**: the best configuration of each (model, framework) is run again with more seeds.
- **Where** the jobs run is the executor's business (``executors``: local worker processes or a Ray
  cluster); everything above, and recording how each job ended, is decided here once for both.

Each trial is a child run created here before its notebook starts (``$IMAGEBENCH_RUN_ID``), so a
trial whose kernel dies is still on record, FAILED with the reason and its partial notebook.
"""

from __future__ import annotations

import math
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from imagebench.store import record
from imagebench import store
from imagebench.core.contract import ENV_CACHE
from imagebench.core.metrics import BEST_VAL_ACCURACY, EPOCHS_RUN, RANKING, TEST_ACCURACY
from imagebench.executors import Executor, Job, check_executor_options, check_whole_number, make_executor
from imagebench.core.planned import Trial
from imagebench.sweep.grid import SweepPlan, make_trial
from imagebench.sweep.lock import SweepLock
from imagebench.sweep.outcomes import JOURNALED, TrialOutcome
from imagebench.core.params import ParamsError
from imagebench.sweep.scheduler import Display, Scheduler
from imagebench.sweep.strategies import Stage, grouped, promote, strategy_for
from imagebench.trial import trial_tags
from imagebench.executors.worker import kernel_memory_limit_mb



@dataclass
class SweepOptions:
    workers: Optional[int] = None  # jobs at once; None: 1 locally, what the cluster holds on Ray
    strategy: str = "grid"
    eta: int = 3
    repeats: int = 1
    rerun: bool = False
    trial_timeout: Optional[float] = None
    fresh_kernels: bool = False
    show_progress: bool = True
    executor: str = "local"
    # the executor's own options (``executors.ExecutorOption``) by key, e.g. {"cpus_per_trial": 2} for Ray
    executor_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        strategy_for(self.strategy)
        check_executor_options(self.executor, self.executor_options)
        for name, value, least in (("--workers", self.workers, 1), ("--eta", self.eta, 2), ("--repeats", self.repeats, 1)):
            check_whole_number(name, value, least)
        if self.trial_timeout is not None and self.trial_timeout <= 0:
            raise ParamsError(f"--trial-timeout {self.trial_timeout} is invalid: give seconds > 0")
        kernel_memory_limit_mb()  # a bad $IMAGEBENCH_KERNEL_MAX_MB is named here, not in every worker


# --- what already exists in MLflow
def mark_abandoned_runs(experiment: str) -> list[str]:
    """Runs left RUNNING by a sweep or kernel that no longer exists → KILLED. Returns their names."""
    marked = []
    for run in store.search_trial_runs(experiment, "attributes.status = 'RUNNING'"):
        owner = run.data.tags.get(store.TAG_OWNER, "")
        if owner and store.owner_is_alive(owner) is not False:
            continue  # alive, or on another host where we cannot tell: leave it alone
        reason = f"left RUNNING by a process that is gone ({owner or 'unknown owner'}); the sweep runs it again"
        store.end_run(run.info.run_id, "KILLED", reason)
        marked.append(run.data.tags.get(store.TAG_TRIAL, run.info.run_id))
    return marked


def relog_journals(experiment: str) -> tuple[list[str], list[str]]:
    """Replay the journals an earlier sweep of this experiment left while the store was down
    (see ``record``): the trials they hold count as what they were, not as lost. Returns the
    replayed trials' folder names and the problems of journals that could not be replayed (kept)."""
    folder = store.runs_dir(experiment)
    done, problems = record.relog_all(record.journals_under([folder]) if folder.is_dir() else [])
    return [replayed.journal.parent.name.removesuffix(".record") for replayed in done], problems


def trained_budget(run) -> int:
    """Epochs a run's trial was trained up to (halving rungs train in steps)."""
    tag = run.data.tags.get(store.TAG_EPOCH_BUDGET)
    return int(tag) if tag and tag.isdigit() else int(run.data.params.get("epochs", 0) or 0)


class TrialRecords:
    """The experiment's existing trial runs, by fingerprint."""

    def __init__(self, experiment: str):
        self.by_fingerprint: dict[str, list] = defaultdict(list)
        for run in store.search_trial_runs(experiment):
            self.by_fingerprint[run.data.tags.get(store.TAG_FINGERPRINT, "")].append(run)

    def finished(self, fingerprint: str, budget: int):
        """The FINISHED run of this trial trained to at least ``budget`` epochs, else None."""
        done = [
            run for run in self.by_fingerprint.get(fingerprint, [])
            if run.info.status == "FINISHED" and trained_budget(run) >= budget
        ]  # fmt: skip
        return max(done, key=lambda run: (trained_budget(run), run.info.start_time), default=None)


@dataclass
class SweepSummary:
    experiment: str
    parent_run_id: str
    strategy: str = "grid"
    outcomes: list[TrialOutcome] = field(default_factory=list)
    skipped: int = 0
    marked_killed: list[str] = field(default_factory=list)
    relogged: list[str] = field(default_factory=list)  # trials replayed from journals left by an outage
    relog_errors: list[str] = field(default_factory=list)
    trial_epochs: int = 0
    seconds: float = 0.0
    interrupted: bool = False
    store_error: str = ""  # the MLflow store stayed down: the sweep stopped, records kept in journals

    @property
    def failed(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status not in ("FINISHED", JOURNALED)]

    @property
    def journaled(self) -> list[TrialOutcome]:
        return [o for o in self.outcomes if o.status == JOURNALED]

    def text(self) -> str:
        ran, finished = len(self.outcomes), len(self.outcomes) - len(self.failed) - len(self.journaled)
        head = "interrupted" if self.interrupted else "stopped" if self.store_error else f"{self.strategy} done"
        journaled = f", {len(self.journaled)} kept in journals" if self.journaled else ""
        epochs = "" if self.store_error else f"; {self.trial_epochs} trial-epochs trained"
        lines = [
            f"sweep '{self.experiment}' {head}: {finished} finished, {len(self.failed)} failed{journaled} of {ran} "
            f"trials run, {self.skipped} already finished (skipped), in {self.seconds / 60:.1f} min"
            f"{epochs} (parent run {self.parent_run_id})"
        ]
        if self.relogged:
            lines.append(f"  re-logged from their journals (the store was down when they ran): {', '.join(self.relogged)}")
        lines += [f"  journal not replayed: {problem}" for problem in self.relog_errors]
        if self.marked_killed:
            lines.append(f"  marked KILLED (left RUNNING by an earlier sweep, run again): {', '.join(self.marked_killed)}")
        for outcome in self.failed + self.journaled + [o for o in self.outcomes if o.finished_with_error]:
            status = "FINISHED with an error" if outcome.finished_with_error else outcome.status
            lines.append(f"  {status} {outcome.notebook.stem}: {outcome.error or outcome.status}")
            lines.append(f"      notebook: {outcome.notebook}  log: {outcome.notebook.with_suffix('.log')}")
        if self.store_error:
            lines.append(f"  stopped because {self.store_error}")
            lines.append("  When the store is back, run this sweep again: it first replays the kept records (or "
                         f"`{record.relog_command(store.runs_dir(self.experiment))}` alone), skips finished trials and runs the rest.")  # fmt: skip
        return "\n".join(lines)


def _metrics(run_id: str) -> dict[str, float]:
    return store.client().get_run(run_id).data.metrics


def _scores(outcome: TrialOutcome) -> str:
    if outcome.status != "FINISHED":
        return outcome.error[:120]
    metrics = _metrics(outcome.run_id)
    val_accuracy, test_accuracy = (metrics.get(metric.key, float("nan")) for metric in (BEST_VAL_ACCURACY, TEST_ACCURACY))
    scores = f"val acc {val_accuracy:.4f}  test acc {test_accuracy:.4f}"
    return f"{scores}  error: {outcome.error[:120]}" if outcome.finished_with_error else scores


def _command(plan: SweepPlan) -> str:
    """The command that reproduces this sweep: as typed, when typed as `imagebench ...`."""
    import shlex
    import sys

    if Path(sys.argv[0]).name == "imagebench" and sys.argv[1:2] == ["sweep"]:
        return shlex.join(["imagebench", *sys.argv[1:]])
    return f"imagebench sweep {shlex.quote(plan.source)}"


class SweepRunner:
    """One invocation of ``imagebench sweep``: owns the parent run, the scheduler and the bookkeeping.
    The strategy (``strategies``) drives it through ``whole_trial_jobs``/``staged_jobs``, ``execute``
    and ``best``."""

    def __init__(self, plan: SweepPlan, options: SweepOptions, executor: Optional[Executor] = None):
        self.plan, self.options = plan, options
        self.runs_dir = store.runs_dir(plan.experiment)
        self.checkpoints_dir = store.results_dir(plan.experiment) / "checkpoints"
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.executor = executor or make_executor(options.executor, options)
        self.lock = SweepLock(plan.experiment).acquire()  # a second sweep of the experiment refuses (sweep.lock)
        self.parent_run_id = self.lock.start_parent_run(plan.source)
        store.set_tags(self.parent_run_id, {store.TAG_STRATEGY: options.strategy, store.TAG_OWNER: store.process_owner(),
                                               store.TAG_EXECUTOR: options.executor, store.TAG_COMMAND: _command(plan)})  # fmt: skip
        self.summary = SweepSummary(plan.experiment, self.parent_run_id, options.strategy)
        # before the abandoned-run check: a run journaled while the store was down is complete, not abandoned
        self.summary.relogged, self.summary.relog_errors = relog_journals(plan.experiment)
        self.summary.marked_killed = mark_abandoned_runs(plan.experiment)
        self.records = TrialRecords(plan.experiment)
        self.run_of: dict[str, str] = {}  # fingerprint -> the run that holds the trial in this sweep
        self.scheduler = Scheduler(self.executor, trial_timeout=options.trial_timeout)

    # --- jobs
    def _new_run(self, trial: Trial, tags: dict[str, str]) -> str:
        run_id = store.create_trial_run(
            self.plan.experiment, trial.name, {**trial_tags(trial.params, trial.dataset_fingerprint), **tags}, self.parent_run_id
        )
        self.run_of[trial.fingerprint] = run_id
        return run_id

    def _already_done(self, trial: Trial, budget: int) -> bool:
        if self.options.rerun:
            return False
        run = self.records.finished(trial.fingerprint, budget)
        if run is not None:
            self.run_of.setdefault(trial.fingerprint, run.info.run_id)
        return run is not None

    def whole_trial_jobs(self, trials: list[Trial], strategy_tag: str = "") -> list[Job]:
        jobs = []
        for trial in trials:
            if self._already_done(trial, trial.params.epochs):
                self.summary.skipped += 1
                continue
            tags = {store.TAG_STRATEGY: strategy_tag or self.options.strategy}
            jobs.append(Job(trial, lambda trial=trial, tags=tags: self._new_run(trial, tags), self.runs_dir / f"{trial.name}.ipynb"))
        return jobs

    def execute(self, jobs: list[Job], title: str) -> list[TrialOutcome]:
        if not jobs:
            return []
        self.scheduler.display = Display(title, len(jobs), self.executor.slots, self.options.show_progress)
        try:
            return self.scheduler.run(jobs, scores=_scores)
        finally:
            self.scheduler.display.close()

    def drop_checkpoints(self, trials) -> None:
        """A trial that will not train further needs no state on disk (ResNet50's is ~300 MB)."""
        for trial in trials:
            (self.checkpoints_dir / f"{trial.name}.pkl").unlink(missing_ok=True)

    def staged_jobs(self, members: list[Trial], stage: Stage) -> list[Job]:
        """Jobs that train each member up to ``stage.budget`` epochs in all (at most its own), in its
        one run of this sweep, continuing from its checkpoint: how a strategy trains in stages
        (halving's rungs). The stage's tags and metrics go on the run as its job starts."""
        jobs = []
        for trial in members:
            trial_budget = min(trial.params.epochs, stage.budget)
            if self._already_done(trial, trial_budget):
                self.summary.skipped += stage.first
                continue
            checkpoint = self.checkpoints_dir / f"{trial.name}.pkl"
            output = self.runs_dir / f"{trial.name}.{stage.name}.ipynb"
            open_run = lambda trial=trial, budget=trial_budget: self._staged_run(trial, stage, budget)  # noqa: E731
            jobs.append(Job(trial, open_run, output, epoch_budget=trial_budget, checkpoint=checkpoint))
        return jobs

    def _staged_run(self, trial: Trial, stage: Stage, budget: int) -> str:
        """The trial's one run across stages: created at its first stage, reopened for each later one."""
        run_id = self.run_of.get(trial.fingerprint)
        if run_id is None:
            (self.checkpoints_dir / f"{trial.name}.pkl").unlink(missing_ok=True)  # a new run starts from scratch
            run_id = self._new_run(trial, stage.tags)
        else:
            store.reopen_run(run_id)
            store.set_tags(run_id, stage.tags)
        store.log_metrics(run_id, stage.metrics(budget), step=stage.step)
        return run_id

    def _scores(self, members: list[Trial]) -> dict[str, tuple[float, float]]:
        """(val accuracy, val loss) of each member whose run in this sweep (or a resumed one) FINISHED."""
        scores = {}
        for trial in members:
            run_id = self.run_of.get(trial.fingerprint)
            if run_id is None or store.run_status(run_id) != "FINISHED":
                continue
            metrics = _metrics(run_id)
            if RANKING[0] in metrics:
                scores[trial.name] = (metrics[RANKING[0]], metrics.get(RANKING[1], math.inf))
        return scores

    def best(self, members: list[Trial], eta: int) -> list[Trial]:
        """The members promoted with ``eta`` (the best 1/eta that finished), in plan order."""
        chosen = set(promote(self._scores(members), eta))
        return [trial for trial in members if trial.name in chosen]

    def run_repeats(self, trials: list[Trial]) -> None:
        """Run each (model, framework)'s best configuration again with seeds seed+1 … seed+K-1."""
        extra = []
        for members in grouped(trials).values():
            leaders = self.best(members, eta=len(members) + 1)  # exactly one: the best that finished
            if not leaders:
                continue  # nothing of this family finished: nothing to repeat
            best = leaders[0]
            for offset in range(1, self.options.repeats):
                params = best.params.model_copy(update={"seed": best.params.seed + offset})
                extra.append(make_trial(best.index, params, best.dataset_fingerprint, best.varying, f"-seed{params.seed}"))
        self.execute(self.whole_trial_jobs(extra, strategy_tag="repeat"), f"{self.plan.experiment} repeats")

    # --- the whole sweep
    def run(self) -> SweepSummary:
        started = time.perf_counter()
        strategy, count = strategy_for(self.options.strategy)
        trials = strategy.select(self.plan.trials, count)
        try:
            strategy.run(self, trials)
            if self.options.repeats > 1:
                self.run_repeats(trials)
        except KeyboardInterrupt:
            self.summary.interrupted = True
        except store.StoreUnavailable as exc:
            self.summary.store_error = str(exc)
        finally:
            self.executor.close()
        self.summary.outcomes = self.scheduler.outcomes
        self.summary.seconds = time.perf_counter() - started
        if not self.summary.store_error:  # nothing more can be written; the parent run is reused on resume
            self._close()
        self.lock.release()
        return self.summary

    def _close(self) -> None:
        touched = {outcome.run_id for outcome in self.summary.outcomes}
        self.summary.trial_epochs = int(sum(_metrics(run_id).get(EPOCHS_RUN.key, 0) for run_id in touched))
        store.log_metrics(
            self.parent_run_id,
            {
                "sweep/trials_run": len(self.summary.outcomes),
                "sweep/failed": len(self.summary.failed),
                "sweep/skipped": self.summary.skipped,
                "sweep/trial_epochs": self.summary.trial_epochs,
                "sweep/minutes": self.summary.seconds / 60,
            },
        )
        store.end_run(self.parent_run_id, "KILLED" if self.summary.interrupted else "FINISHED",
                         "sweep interrupted" if self.summary.interrupted else None)  # fmt: skip


# the parameters that decide which images a trial gets; trials agreeing on them share one data check
DATA_SETTINGS = ("dataset", "image_size", "max_per_class", "val_fraction", "test_fraction")


def check_sweep_data(trials: list[Trial]) -> list[str]:
    """Decode and split every dataset once per data setting the trials use, before any run exists.

    A class too small to split stops the sweep here (``DatasetError`` naming dataset and classes,
    all problems at once) instead of failing trial after trial; unreadable files are reported once.
    The decoded images stay in the decode cache, so the trials start from them (and parallel
    workers do not decode the same photos side by side). Returns one line per setting.
    """
    from imagebench.data.cache import cache_root
    from imagebench.data.folders import DatasetError
    from imagebench.data.load import load_trial_data

    if cache_root() is None:
        return [f"data check left to each trial: the decode cache is off ({ENV_CACHE}=off)"]
    settings = {}
    for trial in trials:
        settings.setdefault(tuple(getattr(trial.params, name) for name in DATA_SETTINGS), trial.params)
    lines, problems = [], []
    for params in settings.values():
        try:
            with warnings.catch_warnings():  # unreadable files are reported below, once
                warnings.simplefilter("ignore", UserWarning)
                data = load_trial_data(params)
        except DatasetError as exc:
            problem = str(exc) if params.dataset in str(exc) else f"{params.dataset}: {exc}"
            problems += [problem] if problem not in problems else []
            continue
        lines.append(_data_line(params.image_size, data))
    if problems:
        raise DatasetError("\n".join(problems))
    return lines


def _data_line(size: int, data) -> str:
    line = f"data {data.source} at {size} px: {data.num_classes} classes, splits {data.split_sizes()}"
    if data.skipped_files:
        line += (f"; {len(data.skipped_files)} unreadable file(s) skipped (each trial's run lists them in "
                 f"{store.ARTIFACT_SKIPPED}; `imagebench check-data {data.source}` shows why), first: {data.skipped_files[0]}")  # fmt: skip
    return line


def run_sweep(plan: SweepPlan, options: Optional[SweepOptions] = None, show_progress: Optional[bool] = None) -> SweepSummary:
    """Reach the store and the executor (a Ray cluster answers and has the resources asked for),
    check the data, then run the sweep: nothing is created in MLflow until all of that holds."""
    options = options or SweepOptions()
    if show_progress is not None:
        options.show_progress = show_progress
    store.check_store_answers()
    executor = make_executor(options.executor, options)
    try:
        for line in [*getattr(executor, "describe", lambda: [])(), *check_sweep_data(plan.trials)]:
            if options.show_progress:
                print(line, flush=True)
        runner = SweepRunner(plan, options, executor)
    except BaseException:
        executor.close()
        raise
    return runner.run()
