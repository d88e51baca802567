"""Growing a grid: values added to a sweep file's matrix, the same `imagebench sweep` again runs only
the new trials (the old ones keep their fingerprints and are skipped as finished) and rebuilds one
leaderboard over all of them (docs/tutorials/batch.md)."""

import csv

import pytest
from helpers import run_sweep, trial_runs, write_sweep_file

from imagebench import store


def _fingerprints(experiment) -> dict[str, str]:
    return {run.data.tags[store.TAG_FINGERPRINT]: run.info.run_id for run in trial_runs(experiment)}


@pytest.mark.slow
def test_a_grown_grid_runs_only_its_new_trials_and_one_leaderboard_covers_them_all(project):
    write_sweep_file(project, "grow", "{learning_rate: [0.001, 0.01]}", epochs=1)
    first = run_sweep(project, "params/grow.yaml", "--quiet")  # docs/tutorials/batch.md, typed twice
    assert first.returncode == 0 and "2 finished, 0 failed of 2 trials run, 0 already finished (skipped)" in first.stdout, first.stdout
    before = _fingerprints("grow")

    # a value inserted in the middle of the list (the old trials' positions in the grid change) and one at the end
    write_sweep_file(project, "grow", "{learning_rate: [0.001, 0.003, 0.01, 0.03]}", epochs=1)
    second = run_sweep(project, "params/grow.yaml", "--quiet")
    assert second.returncode == 0 and "2 finished, 0 failed of 2 trials run, 2 already finished (skipped)" in second.stdout, second.stdout
    after = _fingerprints("grow")
    assert len(before) == 2 and len(after) == 4 and before.items() <= after.items()  # the old runs themselves, untouched

    parents = store.client().search_runs([store.experiment_id("grow")], f"tags.`{store.TAG_ROLE}` = 'sweep'")
    assert len(parents) == 1  # one sweep, one parent run
    with open(project / "results" / "grow" / "trials.csv", newline="") as table:
        rows = list(csv.DictReader(table))
    assert sorted(float(row["learning_rate"]) for row in rows) == [0.001, 0.003, 0.01, 0.03]
    assert {row["trial"] for row in rows} == {run.info.run_name for run in trial_runs("grow")}
