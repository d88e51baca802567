"""One sweep of an experiment at a time, through the CLI: the same sweep started twice at once
trains every fingerprint once (the second refuses, exit 2, naming the other sweep's owner), on one
machine (the file lock) and across machines sharing a store (the parent run's claim); a sweep
killed with -9 blocks nothing and its resume runs normally."""

import os
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from helpers import BIN, REPO, copy_project, inject_cell, run_sweep, trial_runs, wait_for, write_sweep_file

from imagebench import store
from imagebench.sweep import lock

pytestmark = pytest.mark.slow
RATES = "{learning_rate: [0.001, 0.002]}"


def _start_sweep(project: Path, sweep_file: Path, **env) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "imagebench"), "sweep", str(sweep_file), "--no-leaderboard"], cwd=project,
                            env={**os.environ, "IMAGEBENCH_ROOT": str(project), **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip


def _both_at_once(first: tuple, second: tuple) -> list[tuple[subprocess.Popen, str, str]]:
    """Both sweeps started together; every trial waits until one of the two has exited (the refused
    one, within seconds) or 120 s have passed, so the winner surely still runs when the other
    looks, however slowly either starts on a loaded machine."""
    release = first[0].parent / "release-trials"
    for project in {first[0], second[0]}:
        inject_cell(project, f"import pathlib, time\nfor _ in range(600):\n    if pathlib.Path({str(release)!r}).exists():\n"
                             "        break\n    time.sleep(0.2)\n")  # fmt: skip
    sweeps = [_start_sweep(*first), _start_sweep(*second)]
    try:
        wait_for(lambda: any(sweep.poll() is not None for sweep in sweeps), timeout=120)
    except AssertionError:
        pass  # neither refused: both run their trials now, and the assertions say so
    release.touch()
    return [(sweep, *sweep.communicate(timeout=600)) for sweep in sweeps]


def _assert_one_ran_one_refused(results, experiment: str, refused_by: str) -> None:
    codes = sorted(sweep.returncode for sweep, _, _ in results)
    assert codes == [0, 2], [(sweep.returncode, out[-2000:], err[-2000:]) for sweep, out, err in results]
    (winner, _, _), (_, _, refusal) = sorted(results, key=lambda result: result[0].returncode)
    assert f"sweep '{experiment}' is already running (owner {store.process_owner().split(':')[0]}:{winner.pid}" in refusal
    assert refused_by in refusal and "Wait for that sweep to finish, or stop it" in refusal and f"kill {winner.pid}" in refusal
    runs = trial_runs(experiment)
    finished = Counter(run.data.tags[store.TAG_FINGERPRINT] for run in runs if run.info.status == "FINISHED")
    assert len(runs) == 2 and sorted(finished.values()) == [1, 1], [(r.info.run_name, r.info.status) for r in runs]


def test_the_same_sweep_started_twice_at_once_on_one_machine_trains_each_fingerprint_once(project):
    sweep_file = write_sweep_file(project, "twice", RATES, epochs=1)
    results = _both_at_once((project, sweep_file), (project, sweep_file))
    _assert_one_ran_one_refused(results, "twice", refused_by=f"lock {project / 'results' / 'twice' / lock.LOCK_FILE}")


def test_two_machines_sharing_a_store_start_the_same_sweep_at_once_and_one_refuses(project, tmp_path):
    # two project folders (no shared file lock: as two machines) writing one MLflow store
    elsewhere = copy_project(tmp_path / "elsewhere")
    sweep_file = write_sweep_file(project, "shared-claim", RATES, epochs=1)
    shutil.copy(sweep_file, elsewhere / "params" / sweep_file.name)
    store.experiment_id("shared-claim")  # the shared store exists first (two first opens of a new SQLite file race on its schema)
    results = _both_at_once((project, sweep_file), (elsewhere, elsewhere / "params" / sweep_file.name))
    _assert_one_ran_one_refused(results, "shared-claim", refused_by="parent run ")
    assert len(store.client().search_runs([store.experiment_id("shared-claim")], f"tags.`{store.TAG_ROLE}` = 'sweep'")) == 1


def test_a_sweep_killed_with_minus_9_blocks_nothing_and_its_resume_runs_normally(project):
    inject_cell(project, "import time\nif params.learning_rate == 0.002:\n    print('trial 2 is running', flush=True)\n"
                          "    time.sleep(120)\n")  # in the copy the first sweep runs; the resume gets the plain one
    sweep_file = write_sweep_file(project, "killed", RATES, epochs=1)
    sweep = _start_sweep(project, sweep_file)
    wait_for(lambda: any("trial 2 is running" in p.read_text() for p in (project / "results" / "killed" / "runs").glob("002-*.log")))
    os.killpg(sweep.pid, signal.SIGKILL)  # the sweep, its workers and their kernels: nothing ends a run
    sweep.communicate()
    holder = (project / "results" / "killed" / lock.LOCK_FILE).read_text()
    assert holder.endswith(f":{sweep.pid}")  # the file still names the dead owner; its flock went with it
    assert store.run_status(store.find_sweep_run("killed")) == "RUNNING"

    shutil.copy(REPO / "notebooks" / "train.ipynb", project / "notebooks" / "train.ipynb")
    done = run_sweep(project, sweep_file, "--no-leaderboard")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 finished, 0 failed of 1 trials run, 1 already finished (skipped)" in done.stdout
    assert sorted(run.info.status for run in trial_runs("killed")) == ["FINISHED", "FINISHED", "KILLED"]
    assert store.run_status(store.find_sweep_run("killed")) == "FINISHED"
