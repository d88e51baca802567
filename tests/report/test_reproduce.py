"""`imagebench reproduce RUN`: a recorded trial run again from its MLflow record alone, compared
metric by metric, refused before anything runs when the dataset changed."""

import pytest
from helpers import assert_refused, run_imagebench, run_shell, run_sweep, trial_runs, write_sweep_file
from readme_blocks import block

from imagebench import store
from imagebench.core import metrics
from imagebench.report.reproduce import DIFFERENT, IDENTICAL, WITHIN, compare_metrics


def test_the_verdict_compares_every_metric_but_the_durations():
    original = {metrics.TEST_ACCURACY.key: 0.9, metrics.BEST_VAL_LOSS.key: 0.3, metrics.LATENCY_MS.key: 1.0, metrics.TRAIN_SECONDS.key: 8.0}
    timings_differ = {**original, metrics.LATENCY_MS.key: 2.5, metrics.TRAIN_SECONDS.key: 9.1}
    assert compare_metrics(original, timings_differ, 1e-6).verdict == IDENTICAL
    assert compare_metrics(original, {**original, metrics.BEST_VAL_LOSS.key: 0.3 + 1e-7}, 1e-6).verdict == WITHIN
    different = compare_metrics(original, {**original, metrics.TEST_ACCURACY.key: 0.85}, 1e-6)
    assert different.verdict == DIFFERENT and "test/accuracy: 0.9 -> 0.85 (-0.05)" in "\n".join(different.lines())
    assert compare_metrics(original, {metrics.TEST_ACCURACY.key: 0.9}, 1e-6).verdict == DIFFERENT  # a metric lost


@pytest.mark.slow
def test_reproduce_runs_a_recorded_trial_again_and_says_it_is_identical(project):
    write_sweep_file(project, "again", "{seed: [3]}", epochs=2)
    assert run_sweep(project, "params/again.yaml").returncode == 0
    (original,) = trial_runs("again")

    by_id, by_name = block("reproduce").commands(RUN_ID=original.info.run_id, RUN_NAME=original.info.run_name, EXPERIMENT="again")
    reproduced = run_shell(by_id, project)
    assert reproduced.returncode == 0, reproduced.stdout + reproduced.stderr
    assert f"reproduced run {original.info.run_id} as " in reproduced.stdout and "every metric is identical" in reproduced.stdout
    assert "the same prediction on 100.0% of the test images" in reproduced.stdout
    assert len(trial_runs("again")) == 1  # the reproduction is not a trial: resume and the leaderboard never see it
    (copy,) = store.client().search_runs([store.client().get_experiment_by_name("again").experiment_id],
                                         f"tags.`{store.TAG_REPRODUCES}` = '{original.info.run_id}'")
    assert copy.data.tags[store.TAG_ROLE] == "reproduction" and copy.data.tags[store.TAG_REPRODUCTION] == IDENTICAL
    assert copy.data.params == original.data.params

    # a record that no longer matches what the code gives: said, exit 1
    store.log_metrics(original.info.run_id, {metrics.TEST_ACCURACY.key: 0.123}, step=99)
    differs = run_shell(by_name, project)
    assert differs.returncode == 1 and "metrics differ" in differs.stdout and "test/accuracy: 0.123 ->" in differs.stdout

    # a dataset that changed since: refused before anything runs
    store.set_tags(original.info.run_id, {store.TAG_DATASET_FINGERPRINT: "digits-sklearn0.1"})
    before = len(store.client().search_runs([copy.info.experiment_id]))
    refused = run_imagebench("reproduce", original.info.run_id, cwd=project)
    assert refused.returncode == 2 and "dataset digits changed since run" in refused.stderr and "nothing was run" in refused.stderr
    assert len(store.client().search_runs([copy.info.experiment_id])) == before


@pytest.mark.parametrize("arguments, message", [
    (["0123456789abcdef0123456789abcdef"], "not in the store"),
    (["001-trial"], "give --experiment"),
    (["001-trial", "--experiment", "nowhere"], "no trial run named '001-trial' in experiment 'nowhere'"),
    (["0123456789abcdef0123456789abcdef", "--tolerance", "-1"], "--tolerance -1.0 is invalid"),
])  # fmt: skip
def test_reproduce_refuses_what_it_cannot_find(project, arguments, message):
    assert_refused("reproduce", *arguments, message=message, cwd=project)


def test_reproduce_refuses_a_sweep_parent_run(project):
    parent = store.start_sweep_run("parent", "params/x.yaml")
    assert_refused("reproduce", parent, message=f"run {parent} is not a trial run (role 'sweep')", cwd=project)
