"""Sweep bookkeeping without kernels: strategies' arithmetic, resume decisions against a real MLflow
store, KILLED marking, concurrent writers, and the leaderboard's one-record-per-trial rule."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from imagebench.sweep import grid
from imagebench.report import leaderboard
from imagebench import store
from imagebench.core.params import ParamsError
from imagebench.sweep.strategies import halving_budgets, parse_strategy, promote, random_subset, survivors_count
from imagebench.sweep.runner import SweepOptions, SweepRunner, mark_abandoned_runs
from imagebench.trial import trial_tags


# --- strategies
@pytest.mark.parametrize("epochs, eta, budgets", [(9, 3, [1, 3, 9]), (50, 3, [1, 5, 16, 50]), (10, 2, [1, 2, 5, 10]), (2, 3, [2]), (1, 3, [1])])
def test_halving_budgets_grow_by_eta_up_to_the_full_budget(epochs, eta, budgets):
    assert halving_budgets(epochs, eta) == budgets


def test_halving_keeps_the_best_third_of_52_each_rung():
    counts = [52]
    for _ in range(3):
        counts.append(survivors_count(counts[-1], 3))
    assert counts == [52, 17, 5, 1]
    assert survivors_count(2, 3) == 1 and survivors_count(0, 3) == 1


def test_promotion_ranks_on_validation_accuracy_then_loss_and_never_promotes_failures():
    scores = {"a": (0.90, 0.5), "b": (0.95, 0.9), "c": (0.90, 0.3), "d": (0.10, 0.1), "e": (0.5, 1.0), "f": (0.2, 1.0)}
    assert promote(scores, 3) == ["b", "c"]
    assert promote(scores, 2) == ["b", "c", "a"]
    assert promote({}, 3) == []  # every trial of the rung failed: nobody continues


def test_strategy_text_is_checked():
    assert parse_strategy("grid") == ("grid", None)
    assert parse_strategy("random:12") == ("random", 12)
    assert parse_strategy("halving") == ("halving", None)
    for bad in ("random", "random:0", "random:x", "bayes", "grid:3"):
        with pytest.raises(ParamsError, match="--strategy"):
            parse_strategy(bad)
    with pytest.raises(ParamsError, match="--workers 0"):
        SweepOptions(workers=0)


def _plan(tmp_path, matrix="{optimizer: [adam, sgd], learning_rate: [0.001, 0.01, 0.1]}", experiment="resume"):
    path = tmp_path / f"{experiment}.yaml"
    path.write_text(f"experiment: {experiment}\nbase: {{dataset: digits, image_size: 32, epochs: 2}}\n"
                    f"matrix: {matrix}\n")
    return grid.plan_sweep(path, axes={"framework": ["keras", "torch"]})


def test_random_subset_is_k_per_family_seeded_and_in_plan_order(tmp_path):
    plan = _plan(tmp_path)
    chosen = random_subset(plan.trials, 2, seed=7)
    assert [t.params.framework for t in chosen].count("keras") == 2 and len(chosen) == 4
    assert [t.index for t in chosen] == sorted(t.index for t in chosen)
    assert chosen == random_subset(plan.trials, 2, seed=7)
    assert len(random_subset(plan.trials, 99, seed=7)) == len(plan.trials)


# --- resume against a real store
def _record(experiment, trial, status, owner=None, parent=None, budget=None):
    tags = trial_tags(trial.params, trial.dataset_fingerprint)
    run_id = store.create_trial_run(experiment, trial.name, tags, parent)
    store.log_params(run_id, {"epochs": trial.params.epochs})
    if owner is not None:
        store.set_tags(run_id, {store.TAG_OWNER: owner})
    if budget is not None:
        store.set_tags(run_id, {store.TAG_EPOCH_BUDGET: budget})
    if status != "RUNNING":
        store.end_run(run_id, status)
    return run_id


def test_resume_skips_finished_reruns_failed_and_killed_and_marks_abandoned_runs(project, tmp_path):
    plan = _plan(tmp_path)
    t = plan.trials
    _record("resume", t[0], "FINISHED")
    _record("resume", t[1], "FAILED")
    abandoned = _record("resume", t[2], "RUNNING", owner=f"{socket.gethostname()}:999999999")  # that pid is gone
    alive = _record("resume", t[3], "RUNNING", owner=f"{socket.gethostname()}:{os.getppid()}")  # still running
    elsewhere = _record("resume", t[4], "RUNNING", owner="another-host:12")
    _record("resume", t[5], "FINISHED", budget=1)  # a halving rung: trained 1 of 2 epochs, not done

    runner = SweepRunner(plan, SweepOptions())
    assert runner.summary.marked_killed == [t[2].name]
    assert store.run_status(abandoned) == "KILLED"
    assert store.run_status(alive) == "RUNNING" and store.run_status(elsewhere) == "RUNNING"
    jobs = runner.whole_trial_jobs(plan.trials)
    assert runner.summary.skipped == 1
    assert [job.trial.name for job in jobs] == [trial.name for trial in t[1:]]
    assert len(store.search_trial_runs("resume")) == 6  # runs are created when a job starts, not when planned
    opened = [job.open_run() for job in jobs]
    assert all(store.client().get_run(run_id).data.tags[store.TAG_PARENT] == runner.parent_run_id for run_id in opened)

    forced = SweepRunner(plan, SweepOptions(rerun=True))
    assert forced.parent_run_id == runner.parent_run_id  # the sweep's parent run is reused
    assert len(forced.whole_trial_jobs(plan.trials)) == len(plan.trials)


def test_mark_abandoned_only_touches_trials_of_that_experiment(project, tmp_path):
    plan = _plan(tmp_path)
    other = _plan(tmp_path, experiment="other")
    _record("resume", plan.trials[0], "RUNNING", owner=f"{socket.gethostname()}:999999999")
    kept = _record("other", other.trials[0], "RUNNING", owner=f"{socket.gethostname()}:999999999")
    assert mark_abandoned_runs("resume") == [plan.trials[0].name]
    assert store.run_status(kept) == "RUNNING"


def test_leaderboard_counts_each_trial_once_after_a_resume(project, tmp_path):
    plan = _plan(tmp_path, matrix="{learning_rate: [0.001, 0.01]}")
    first, second = [trial for trial in plan.trials if trial.params.framework == "torch"]
    _record("resume", first, "KILLED")
    for trial, accuracy in ((first, 0.9), (second, 0.8)):
        run_id = _record("resume", trial, "RUNNING")
        store.log_metrics(run_id, {"best/val_accuracy": accuracy, "best/val_loss": 1 - accuracy, "test/accuracy": accuracy})
        store.end_run(run_id, "FINISHED")
    _record("resume", second, "FAILED")  # a later failed attempt does not hide the finished one
    board = leaderboard.build("resume", with_figures=False)
    assert len(board.trials) == 2 and set(board.trials["status"]) == {"FINISHED"}
    assert (board.leaders.iloc[0]["finished"], board.leaders.iloc[0]["failed"]) == (2, 0)


def test_repeated_seeds_give_mean_and_confidence_interval(project, tmp_path):
    plan = _plan(tmp_path, matrix="{learning_rate: [0.001, 0.01]}")
    base = next(trial for trial in plan.trials if trial.params.framework == "keras")
    single = next(trial for trial in plan.trials if trial.params.framework == "keras" and trial is not base)
    accuracies = [0.80, 0.84, 0.88]
    for offset, accuracy in enumerate(accuracies):
        params = base.params.model_copy(update={"seed": base.params.seed + offset})
        trial = grid.make_trial(base.index, params, base.dataset_fingerprint, {}, f"-seed{params.seed}")
        run_id = _record("resume", trial, "RUNNING")
        store.log_metrics(run_id, {"best/val_accuracy": accuracy, "best/val_loss": 0.1, "test/accuracy": accuracy - 0.1})
        store.end_run(run_id, "FINISHED")
    lucky = _record("resume", single, "RUNNING")  # one seed, 0.85 > the mean 0.84 of the repeated one
    store.log_metrics(lucky, {"best/val_accuracy": 0.85, "best/val_loss": 0.1, "test/accuracy": 0.5})
    store.end_run(lucky, "FINISHED")

    leaders = leaderboard.build("resume", with_figures=False).leaders
    assert leaders.iloc[0]["run_id"] == lucky and leaders.iloc[0]["seeds"] == 1
    store.log_metrics(lucky, {"best/val_accuracy": 0.83}, step=1)  # now below the repeated mean
    row = leaderboard.build("resume", with_figures=False).leaders.iloc[0]
    assert row["seeds"] == 3 and row["test_accuracy"] == pytest.approx(0.74)
    # t(0.975, 2) = 4.303; std 0.04; half-width 4.303 * 0.04 / sqrt(3)
    assert row["test_accuracy_ci95"] == pytest.approx(4.3027 * 0.04 / 3**0.5, rel=1e-3)
    assert row["finished"] == 4


# --- many writers on one SQLite store
WRITER = textwrap.dedent("""
    import sys
    from imagebench import store
    run_id, batches = sys.argv[1], int(sys.argv[2])
    for step in range(batches):
        store.log_metrics(run_id, {f"m{k}": step + k for k in range(5)}, step=step)
""")


def test_concurrent_writers_on_sqlite_lose_nothing(project):
    writers, batches = 8, 40
    run_ids = [store.create_trial_run("busy", f"w{i}", {}, None) for i in range(writers)]
    processes = [subprocess.Popen([sys.executable, "-c", WRITER, run_id, str(batches)]) for run_id in run_ids]
    assert [process.wait(timeout=300) for process in processes] == [0] * writers
    client = store.client()
    for run_id in run_ids:
        for k in range(5):
            history = client.get_metric_history(run_id, f"m{k}")
            assert sorted((m.step, m.value) for m in history) == [(step, step + k) for step in range(batches)]


def test_a_running_notebook_is_written_at_most_every_few_seconds_then_whole_at_its_end():
    from imagebench.executors import worker

    class Manager:  # papermill's NotebookExecutionManager, as far as saving goes
        writes = 0

        def save(self, **kwargs):
            self.writes += 1

    manager = Manager()
    worker._save_at_most_every(manager, seconds=60)
    for _cell in range(10):  # before and after each cell
        manager.save()
        manager.save()
    assert manager.writes == 1  # the first, then nothing within the minute
    del manager.save  # what the engine does when the job ends: papermill's last save always writes
    manager.save()
    assert manager.writes == 2
