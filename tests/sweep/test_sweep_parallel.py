"""The sweep at scale, end to end through worker processes and papermill kernels: parallel workers
on one SQLite store, failure isolation (raise, kernel killed, timeout), kill -9 and resume, halving
continued from checkpoints, repeated seeds."""

import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from helpers import BIN, REPO, inject_cell, run_sweep, trial_runs, wait_for, write_sweep_file

from imagebench.report import leaderboard
from imagebench.store import record
from imagebench import store
from imagebench.core import metrics

pytestmark = pytest.mark.slow



def test_four_workers_on_sqlite_lose_no_trial_and_no_metric(project):
    sweep_file = write_sweep_file(project, "busy", "{learning_rate: [0.001, 0.002, 0.003, 0.004, 0.005, 0.006, 0.007, 0.008]}")
    done = run_sweep(project, sweep_file, "--workers", "4", "--no-leaderboard")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = trial_runs("busy")
    assert len(runs) == 8 and {run.info.status for run in runs} == {"FINISHED"}
    client = store.client()
    for run in runs:
        assert set(metrics.FINAL_METRICS) - {"test/top5_accuracy"} <= set(run.data.metrics)
        for key in metrics.EPOCH_METRICS:
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
    assert "done 8/8, failed 0" in done.stdout


def test_a_raising_a_dying_and_a_hanging_trial_fail_alone(project):
    # the dying trial's kernel is killed right after its third epoch is recorded: epochs 2 and 3
    # were still held (record.EPOCH_SEND_SECONDS), and the sweep must send them from the unsent file
    inject_cell(project, "import os, signal, time\n"
                          "from imagebench.training import monitor\n"
                          "_end_epoch = monitor.EpochMonitor.end_epoch\n"
                          "def _dies_after_epoch_3(self, record):\n"
                          "    kept = _end_epoch(self, record)\n"
                          "    if record.epoch == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
                          "    return kept\n"
                          "if params.learning_rate == 0.0666: monitor.EpochMonitor.end_epoch = _dies_after_epoch_3\n"
                          "if params.learning_rate == 0.0777: time.sleep(600)\n"
                          "if params.learning_rate == 0.0888: raise RuntimeError('this trial raises on purpose')\n")
    # the hanging trial first: it waits out its timeout on one worker while the other runs the rest
    sweep_file = write_sweep_file(project, "faults", "{learning_rate: [0.0777, 0.001, 0.0666, 0.0888]}", epochs=4)
    done = run_sweep(project, sweep_file, "--workers", "2", "--trial-timeout", "35", "--no-leaderboard")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 finished, 3 failed of 4 trials run" in done.stdout
    runs = {run.data.tags[store.TAG_TRIAL]: run for run in trial_runs("faults")}
    assert len(runs) == 4
    errors = sorted(run.data.tags.get(store.TAG_ERROR, "") for run in runs.values() if run.info.status == "FAILED")
    assert len(errors) == 3
    assert any("kernel" in e.lower() and "died" in e.lower() for e in errors), errors
    assert any("--trial-timeout 35" in e for e in errors), errors
    assert any("this trial raises on purpose" in e for e in errors), errors
    for run in runs.values():  # every one, failed or not, has its (partial) notebook attached
        assert store.client().list_artifacts(run.info.run_id, store.ARTIFACT_NOTEBOOK_DIR)
    assert done.stdout.count("notebook: ") == 3  # the summary says where each failed notebook is
    died = next(run for run in runs.values() if run.data.params.get("learning_rate") == "0.0666")
    assert [m.step for m in store.client().get_metric_history(died.info.run_id, "val/accuracy")] == [1, 2, 3]
    assert not list((project / "results" / "faults" / "runs").rglob(record.UNSENT))


def _workers_of(project: Path) -> list:
    import psutil

    return [p for p in psutil.process_iter(["cmdline"])
            if "imagebench.executors.worker" in " ".join(p.info["cmdline"] or []) and str(project) in " ".join(p.info["cmdline"])]


def test_kill_9_mid_trial_then_resume_completes_exactly_the_missing_trials(project):
    inject_cell(project, "import time\nif params.learning_rate == 0.002:\n    print('trial 2 is running', flush=True)\n"
                          "    time.sleep(120)\n")  # in the copy the first sweep runs; the rerun gets the plain one
    sweep_file = write_sweep_file(project, "crash", "{learning_rate: [0.001, 0.002, 0.003]}", epochs=2)
    sweep = subprocess.Popen([str(BIN / "imagebench"), "sweep", str(sweep_file), "--no-leaderboard"], cwd=project,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log_dir = project / "results" / "crash" / "runs"

    wait_for(lambda: any("trial 2 is running" in p.read_text() for p in log_dir.glob("002-*.log")))
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    wait_for(lambda: not _workers_of(project), timeout=30)  # the orphaned worker took its kernel down
    before = {r.data.tags[store.TAG_TRIAL]: r.info.status for r in trial_runs("crash")}
    assert sorted(before.values()) == ["FINISHED", "RUNNING"]  # the killed trial is left RUNNING

    shutil.copy(REPO / "notebooks" / "train.ipynb", project / "notebooks" / "train.ipynb")
    done = run_sweep(project, sweep_file)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 finished, 0 failed of 2 trials run, 1 already finished (skipped)" in done.stdout
    assert "marked KILLED" in done.stdout
    after = [r.info.status for r in trial_runs("crash")]
    assert sorted(after) == ["FINISHED", "FINISHED", "FINISHED", "KILLED"] and "RUNNING" not in after
    board = leaderboard.build("crash", with_figures=False)
    assert len(board.trials) == 3 and board.trials["trial"].is_unique
    assert (board.leaders.iloc[0]["finished"], board.leaders.iloc[0]["failed"]) == (3, 0)
    assert store.run_status(store.find_sweep_run("crash")) == "FINISHED"


def test_halving_continues_survivors_from_checkpoints_then_repeats_the_best(project):
    sweep_file = write_sweep_file(project, "halve", "{learning_rate: [0.0003, 0.001, 0.003, 0.01]}", epochs=3)
    done = run_sweep(project, sweep_file, "--strategy", "halving", "--eta", "3", "--repeats", "2", "--workers", "2",
                  "--set", "early_stopping_patience=0")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    runs = trial_runs("halve")
    assert len(runs) == 5  # 4 trials (one run each, across rungs) + 1 repeat of the best
    client = store.client()
    rung2 = [r for r in runs if r.data.tags.get(store.TAG_RUNG) == "2/2"]
    assert len(rung2) == 1  # 4 // 3 = 1 survivor
    survivor = rung2[0].info.run_id
    steps = [m.step for m in client.get_metric_history(survivor, "val/accuracy")]
    assert steps == [1, 2, 3]  # epoch 1 from rung 1, epochs 2-3 continued from the checkpoint, none repeated
    assert [m.value for m in client.get_metric_history(survivor, "halving/epoch_budget")] == [1, 3]
    # the cost ledger adds up the rungs, like cost/train_seconds: each rung's record is the total so far
    for metric in (metrics.CHECKPOINT_SECONDS, metrics.FIGURES_SECONDS, metrics.TEST_EVAL_SECONDS, metrics.KERNEL_SECONDS):
        per_rung = [m.value for m in sorted(client.get_metric_history(survivor, metric.key), key=lambda m: m.timestamp)]
        assert len(per_rung) == 2 and 0 < per_rung[0] < per_rung[1], (metric.key, per_rung)
    others = [r for r in runs if r.data.tags.get(store.TAG_RUNG) == "1/2"]
    assert len(others) == 3 and all(r.data.metrics["epochs_run"] == 1 for r in others)
    assert not list((project / "results" / "halve" / "checkpoints").glob("*.pkl"))  # cleaned up when done
    assert "9 trial-epochs trained" in done.stdout  # 3 losers x 1 + the survivor's 3 + the repeat's 3
    repeat = [r for r in runs if r.data.tags.get(store.TAG_STRATEGY) == "repeat"]
    assert len(repeat) == 1 and repeat[0].data.params["seed"] == "43"
    assert repeat[0].data.tags[store.TAG_CONFIG] == rung2[0].data.tags[store.TAG_CONFIG]
    row = leaderboard.build("halve", with_figures=False).leaders.iloc[0]
    assert row["seeds"] == 2


def test_a_worker_keeps_its_kernel_warm_and_replaces_it_after_a_failure(project):
    inject_cell(project, "if params.learning_rate == 0.002:\n    params.dataset = 'no-such-folder'  # fails in run_trial\n")
    sweep_file = write_sweep_file(project, "warm", "{learning_rate: [0.001, 0.002, 0.003, 0.004]}", epochs=1)
    done = run_sweep(project, sweep_file, "--no-leaderboard")
    assert done.returncode == 1 and "no-such-folder" in done.stdout
    # trials 001..004 ran in this order on the one worker; 002 failed loading its data
    kernel = {r.data.tags[store.TAG_TRIAL][:3]: r.data.tags[store.TAG_KERNEL] for r in trial_runs("warm")}
    assert kernel["001"] == kernel["002"]  # the second trial ran in the first one's kernel: no imports again
    assert kernel["003"] != kernel["002"]  # a failed trial's kernel is replaced: its state is unknown
    assert kernel["003"] == kernel["004"]
    # the cost ledger tells a kernel's start from its reuse
    started = {r.data.tags[store.TAG_TRIAL][:3]: r.data.metrics[metrics.KERNEL_SECONDS.key] for r in trial_runs("warm")}
    assert started["002"] < started["001"] and started["004"] < started["003"], started
    statuses = sorted(r.info.status for r in trial_runs("warm"))
    assert statuses == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]

    fresh_file = write_sweep_file(project, "fresh", "{learning_rate: [0.001, 0.003]}", epochs=1)
    done = run_sweep(project, fresh_file, "--no-leaderboard", "--fresh-kernel")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len({r.data.tags[store.TAG_KERNEL] for r in trial_runs("fresh")}) == 2


def test_sigterm_ends_the_running_trial_killed_and_keeps_its_notebook(project):
    inject_cell(project, "import time\nprint('trial is running', flush=True)\ntime.sleep(120)\n")
    sweep_file = write_sweep_file(project, "term", "{learning_rate: [0.001, 0.002]}", epochs=1)
    sweep = subprocess.Popen([str(BIN / "imagebench"), "sweep", str(sweep_file), "--no-leaderboard"], cwd=project,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_dir = project / "results" / "term" / "runs"
    wait_for(lambda: any("trial is running" in p.read_text() for p in log_dir.glob("001-*.log")))
    sweep.send_signal(signal.SIGTERM)
    output, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, output[-3000:]
    runs = trial_runs("term")
    assert [run.info.status for run in runs] == ["KILLED"]  # the second trial never started
    assert "sweep interrupted" in runs[0].data.tags.get(store.TAG_ERROR, "")
    assert store.client().list_artifacts(runs[0].info.run_id, store.ARTIFACT_NOTEBOOK_DIR)  # partial notebook kept
    assert "interrupted" in output.lower()
    wait_for(lambda: not _workers_of(project), timeout=30)  # no worker or kernel left behind


def test_a_store_that_stays_down_stops_the_sweep_and_relog_loses_nothing(project, monkeypatch):
    import sqlite3

    from helpers import assert_documented_record

    inject_cell(project, "import pathlib, time\nprint('waiting for the store to go down', flush=True)\n"
                          "while not pathlib.Path('STORE-LOCKED').exists():\n    time.sleep(0.1)\n")
    sweep_file = write_sweep_file(project, "outage", "{learning_rate: [0.001, 0.002]}", epochs=2)
    monkeypatch.setenv(store.ENV_STORE_PATIENCE, "2")
    sweep = subprocess.Popen([str(BIN / "imagebench"), "sweep", str(sweep_file)], cwd=project,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_dir = project / "results" / "outage" / "runs"
    wait_for(lambda: any("waiting for the store" in p.read_text() for p in log_dir.glob("001-*.log")))
    lock = sqlite3.connect(project / "mlflow.db", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")  # another program holds the database: every MLflow call is refused
    (project / "STORE-LOCKED").touch()
    try:
        output, _ = sweep.communicate(timeout=300)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert sweep.returncode == 3, output[-3000:]
    assert "stopped because MLflow store" in output and f"imagebench relog {log_dir}" in output
    runs = trial_runs("outage")
    assert [run.info.status for run in runs] == ["RUNNING"]  # the second trial never started
    run_id = runs[0].info.run_id
    assert not store.client().get_metric_history(run_id, "val/accuracy")  # trained, but nothing reached the store

    done = run_sweep(project, sweep_file, "--no-leaderboard")  # the store is back: resume replays the journal first
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "re-logged from their journals" in done.stdout and "marked KILLED" not in done.stdout
    assert "1 finished, 0 failed of 1 trials run, 1 already finished (skipped)" in done.stdout
    assert_documented_record(run_id, num_classes=10)  # every param, epoch metric, final metric and artifact
    assert store.client().list_artifacts(run_id, store.ARTIFACT_NOTEBOOK_DIR)


def test_a_full_disk_while_writing_a_notebook_fails_that_trial_clearly(project):
    from imagebench.sweep import grid

    sweep_file = write_sweep_file(project, "fulldisk", "{learning_rate: [0.001, 0.002]}", epochs=1)
    first, second = grid.plan_sweep(sweep_file).trials
    runs_dir = project / "results" / "fulldisk" / "runs"
    runs_dir.mkdir(parents=True)
    (runs_dir / f"{first.name}.ipynb").symlink_to("/dev/full")  # every write there: ENOSPC, no space left
    done = run_sweep(project, sweep_file, "--no-leaderboard")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 finished, 1 failed of 2 trials run" in done.stdout
    runs = {run.data.tags[store.TAG_TRIAL]: run for run in trial_runs("fulldisk")}
    failed, finished = runs[first.name], runs[second.name]
    assert failed.info.status == "FAILED" and finished.info.status == "FINISHED"
    error = failed.data.tags[store.TAG_ERROR]
    assert "disk full while writing" in error and first.name in error and "run the sweep again" in error
    assert not store.client().list_artifacts(failed.info.run_id, store.ARTIFACT_NOTEBOOK_DIR)  # nothing half-written attached
    assert store.client().list_artifacts(finished.info.run_id, store.ARTIFACT_NOTEBOOK_DIR)


def test_a_store_back_before_the_sweep_records_the_trial_gets_its_journal_replayed(project, monkeypatch):
    # the trial's own kernel holds the database for the whole trial: every write of that trial is
    # refused; the lock goes with the kernel, so the store answers again when the sweep records it
    inject_cell(project, "import sqlite3\nif params.learning_rate == 0.001:\n"
                          "    _hold = sqlite3.connect('mlflow.db', isolation_level=None)\n"
                          "    _hold.execute('BEGIN EXCLUSIVE')\n")
    sweep_file = write_sweep_file(project, "blip", "{learning_rate: [0.001, 0.002]}", epochs=2)
    monkeypatch.setenv(store.ENV_STORE_PATIENCE, "2")
    done = run_sweep(project, sweep_file, "--no-leaderboard")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "2 finished, 0 failed of 2 trials run" in done.stdout
    runs = {run.data.params["learning_rate"]: run for run in trial_runs("blip")}
    replayed = runs["0.001"]
    assert replayed.info.status == "FINISHED" and store.TAG_ERROR not in replayed.data.tags
    assert "entries from" in replayed.data.tags[store.TAG_RELOGGED]
    steps = [m.step for m in store.client().get_metric_history(replayed.info.run_id, "val/accuracy")]
    assert steps == [1, 2]
    assert store.client().list_artifacts(replayed.info.run_id, store.ARTIFACT_NOTEBOOK_DIR)
    assert store.TAG_RELOGGED not in runs["0.002"].data.tags  # the store was up for it: nothing journaled


def test_a_kernel_grown_past_its_memory_limit_is_replaced(project, monkeypatch):
    monkeypatch.setenv("IMAGEBENCH_KERNEL_MAX_MB", "1")  # every kernel is over 1 MB after a trial
    sweep_file = write_sweep_file(project, "recycle", "{learning_rate: [0.001, 0.002]}", epochs=1)
    done = run_sweep(project, sweep_file, "--no-leaderboard")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert len({r.data.tags[store.TAG_KERNEL] for r in trial_runs("recycle")}) == 2

    monkeypatch.setenv("IMAGEBENCH_KERNEL_MAX_MB", "lots")
    done = run_sweep(project, sweep_file, "--no-leaderboard")
    assert done.returncode == 2 and "IMAGEBENCH_KERNEL_MAX_MB='lots' is invalid" in done.stderr
