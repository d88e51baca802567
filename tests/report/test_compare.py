"""`imagebench compare A B`: two sweeps matched configuration by configuration, each delta with its
interval, only changes beyond noise flagged, what differs in the record; a report folder and a
comparison run. Hand-checked statistics first, then two real sweeps through the documented lines,
then bad input."""

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
from helpers import BIN, TINY, assert_refused, log_predictions, recorded_trial, run_imagebench, run_shell, run_sweep, seed_predictions
from readme_blocks import block

from imagebench import store
from imagebench.core.params import FIELD_NAMES
from imagebench.report import compare, statistics

# ---- hand-checked deltas -----------------------------------------------------------------------


def test_paired_delta_is_mcnemar_with_a_bootstrap_interval_over_images():
    # B wrong on 6 images A gets right, right on none A misses: p = 2 / 2^6 = 0.03125; delta = -6/30
    a = np.ones(30, dtype=bool)
    b = a.copy()
    b[:6] = False
    result = statistics.delta([seed_predictions(a)], [seed_predictions(b)])
    assert result.method == statistics.PAIRED and result.p == pytest.approx(2 / 64)
    assert result.difference == pytest.approx(-0.2) and result.low < -0.2 < result.high < 0
    same = statistics.delta([seed_predictions(a)], [seed_predictions(a)])
    assert (same.difference, same.low, same.high, same.p) == (0, 0, 0, 1)


def test_delta_over_seeds_is_the_permutation_test_and_an_interval_of_the_mean_difference():
    # 3 seeds each, every B seed above every A seed: the two-sided exact permutation p = 2 / C(6,3) = 0.1
    a = [seed_predictions(np.arange(100) < hits) for hits in (80, 82, 81)]
    b = [seed_predictions(np.arange(100) < hits) for hits in (90, 91, 92)]
    result = statistics.delta(a, b)
    assert result.method == statistics.OVER_SEEDS and result.p == pytest.approx(0.1)
    assert result.difference == pytest.approx(0.1) and 0.08 <= result.low <= 0.1 <= result.high <= 0.12


def test_delta_on_other_test_images_is_two_independent_proportions():
    # 90/100 in B against 75/100 in A. Score test: pooled p = 0.825, variance 0.825 * 0.175 * (2 / 100) * 200 / 199 (statsmodels'
    # small-sample correction n / (n - 1)), z = 0.15 / 0.053871 = 2.7844, p = 0.00536. Newcombe's interval from the Wilson
    # intervals of each proportion.
    a = seed_predictions(np.arange(100) < 75, test_set="v1")
    b = seed_predictions(np.arange(100) < 90, test_set="v2")
    result = statistics.delta([a], [b])
    assert result.method == statistics.UNPAIRED and result.difference == pytest.approx(0.15)
    assert result.p == pytest.approx(0.00536, abs=2e-5)
    from statsmodels.stats.proportion import proportion_confint

    (l1, u1), (l2, u2) = (proportion_confint(hits, 100, method="wilson") for hits in (90, 75))
    low, high = 0.15 - np.sqrt((0.9 - l1) ** 2 + (u2 - 0.75) ** 2), 0.15 + np.sqrt((u1 - 0.9) ** 2 + (0.75 - l2) ** 2)
    assert (result.low, result.high) == (pytest.approx(low), pytest.approx(high))


def _sweep_record(name: str, augment: str, learning_rates, versions: dict, commit: str, data: str) -> compare.Sweep:
    params = {name: "x" for name in FIELD_NAMES}
    configurations = [compare.Configuration("cnn", "torch", {**params, "augment": augment, "learning_rate": rate}, [f"{name}-{rate}"], {})
                      for rate in learning_rates]  # fmt: skip
    tags = {store.TAG_VERSIONS: json.dumps(versions), store.TAG_GIT_COMMIT: commit, store.TAG_DATASET_FINGERPRINT: data}
    return compare.Sweep(name, name, None, configurations, [tags] * len(configurations))


def test_matching_and_the_record_differences_of_two_sweeps():
    """A TensorFlow upgrade with a new augmentation on a new dataset version, over a grown grid."""
    a = _sweep_record("a", "none", ["0.001", "0.01"], {"tensorflow": "2.20.0", "numpy": "2.1.0"}, "abc1234", "data-v1")
    b = _sweep_record("b", "light", ["0.001", "0.01", "0.1"], {"tensorflow": "2.21.0", "numpy": "2.1.0"}, "def5678", "data-v2")
    assert compare.compared_parameters(a, b) == ["augment"]
    pairs, only_a, only_b, axes = compare.match(a, b)
    assert [(first.params["learning_rate"], second.params["learning_rate"]) for first, second in pairs] == [("0.001", "0.001"), ("0.01", "0.01")]
    assert (only_a, [c.params["learning_rate"] for c in only_b], axes) == ([], ["0.1"], ["learning_rate"])
    differences = compare.record_differences(a, b, ["augment"]).values.tolist()
    assert differences == [["compared", "augment", "none", "light"], ["grid", "learning_rate", "0.001, 0.01", "0.001, 0.01, 0.1"],
                           ["package", "tensorflow", "2.20.0", "2.21.0"], ["git commit", store.TAG_GIT_COMMIT, "abc1234", "def5678"],
                           ["dataset", store.TAG_DATASET_FINGERPRINT, "data-v1", "data-v2"]]  # fmt: skip


# ---- two real sweeps that differ in their epochs -------------------------------------------------

BASE = TINY.replace("max_per_class: 12", "max_per_class: 60").replace("batch_size: 64", "batch_size: 32")  # 150 test images


def _sweep(project, name: str, epochs: int) -> None:
    # at a learning rate of 1e-7 the weights barely move in 6 epochs: nothing may change there; at 0.003 they learn
    path = project / "params" / f"{name}.yaml"
    path.write_text(f"experiment: {name}\nbase: {{{BASE}, epochs: {epochs}, framework: torch, model: cnn}}\n"
                    "matrix: {learning_rate: [0.0000001, 0.003]}\n")  # fmt: skip
    done = run_sweep(project, path, "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def two_sweeps(module_project):
    _sweep(module_project, "epochs1", 1)
    _sweep(module_project, "epochs6", 6)
    return module_project


@pytest.mark.slow
def test_compare_flags_only_the_change_beyond_noise_and_records_the_comparison(two_sweeps, tmp_path):
    root = two_sweeps
    by_names, by_parents = block("compare").commands(EXPERIMENT_A="epochs1", EXPERIMENT_B="epochs6", PARENT_RUN_A=store.find_sweep_run("epochs1"),
                                                     PARENT_RUN_B=store.find_sweep_run("epochs6"), REPORT_FOLDER=str(tmp_path / "report"))  # fmt: skip
    done = run_shell(by_names, root)  # docs/tutorials/reviewer.md
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("Compared: epochs 1 -> 6. Of 2 matched configurations, 1 changed beyond noise: "
                                  "torch/cnn learning_rate=0.003: better in epochs6 (+")  # fmt: skip
    assert "torch/cnn learning_rate=1e-07:" in done.stdout and "within noise" in done.stdout
    assert "With 150 test images, a configuration must change its answer on at least 6 images" in done.stdout

    folder = root / "results" / "comparisons" / "epochs1-vs-epochs6"
    assert sorted(path.name for path in folder.iterdir()) == ["comparison.csv", "comparison.html", "comparison.md", "deltas.png", "differences.csv"]
    table = pd.read_csv(folder / "comparison.csv").set_index("configuration")
    learned, still = table.loc["torch/cnn learning_rate=0.003"], table.loc["torch/cnn learning_rate=1e-07"]
    assert learned["verdict"] == "better" and learned["p_holm"] < 0.05 and 0 < learned["delta_low"] <= learned["delta"] <= learned["delta_high"]
    assert learned["delta"] == pytest.approx(learned["b_test_accuracy"] - learned["a_test_accuracy"])  # the recorded test accuracies
    assert still["verdict"] == "within noise" and still["p_holm"] >= 0.05 and still["delta_low"] <= 0 <= still["delta_high"]
    assert (table["method"] == statistics.PAIRED).all() and (table["a_seeds"] == 1).all()
    differences = pd.read_csv(folder / "differences.csv", dtype=str)
    assert differences.values.tolist() == [["compared", "epochs", "1", "6"]]  # same grid, packages, commit and data
    assert "better in epochs6" in (folder / "comparison.html").read_text(encoding="utf-8")

    recorded = store.client().search_runs([store.experiment_id(compare.EXPERIMENT)], filter_string=f"tags.`{store.TAG_ROLE}` = 'comparison'")
    assert len(recorded) == 1 and recorded[0].info.status == "FINISHED" and recorded[0].info.run_name == "epochs1-vs-epochs6"
    assert recorded[0].data.metrics == {"matched": 2, "beyond_noise": 1, "better": 1, "worse": 0}
    assert recorded[0].data.tags[store.TAG_COMPARED_B] == "epochs6" and "## What differs in the record" in recorded[0].data.tags[store.TAG_NOTE]
    artifacts = {item.path for item in store.client().list_artifacts(recorded[0].info.run_id, compare.ARTIFACT_DIR)}
    assert f"{compare.ARTIFACT_DIR}/comparison.html" in artifacts and f"{compare.ARTIFACT_DIR}/deltas.png" in artifacts

    by_parent_runs = run_shell(by_parents, root)  # the report elsewhere
    assert by_parent_runs.returncode == 0, by_parent_runs.stderr
    assert f"report: {tmp_path / 'report'}" in by_parent_runs.stdout
    assert pd.read_csv(tmp_path / "report" / "comparison.csv")["verdict"].tolist() == ["within noise", "better"]


@pytest.mark.slow
def test_the_leaderboard_notebook_compares_its_experiment_with_another(two_sweeps, tmp_path):
    executed = tmp_path / "leaderboard.ipynb"
    settings = json.dumps({"experiment": "epochs6", "write_files": False, "compare_with": "epochs1"})
    done = subprocess.run([str(BIN / "papermill"), "notebooks/leaderboard.ipynb", str(executed), "-y", settings], cwd=two_sweeps,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    printed = "".join("".join(output.get("text", "")) for cell in json.loads(executed.read_text())["cells"] for output in cell.get("outputs", []))
    assert "Compared: epochs 1 -> 6. Of 2 matched configurations, 1 changed beyond noise" in printed


# ---- bad input ---------------------------------------------------------------------------------


def _recorded_sweep(experiment: str, folder, class_names=("a", "b"), correct=None) -> str:
    store.start_sweep_run(experiment, f"params/{experiment}.yaml")
    run_id = recorded_trial(experiment, "cnn", "torch", 0.9, 0.3, 0.8)
    if correct is not None:
        log_predictions(run_id, correct, folder, class_names)
    return run_id


def test_compare_refuses_what_it_cannot_find_or_compare(project, tmp_path):
    trial = _recorded_sweep("sweep_a", tmp_path, correct=np.ones(10, bool))
    _recorded_sweep("other_task", tmp_path / "b", class_names=("cat", "dog"), correct=np.ones(10, bool))
    _recorded_sweep("old", tmp_path / "c")  # recorded before test predictions were
    store.start_sweep_run("empty", "params/empty.yaml")
    refusals = [
        (["nowhere", "sweep_a"], "'nowhere' is no experiment in"),
        (["sweep_a", "sweep_a"], "'sweep_a' and 'sweep_a' are the same sweep"),
        (["sweep_a", trial], f"run {trial} is not a sweep's parent run (role 'trial')"),
        (["sweep_a", "other_task"], "the two sweeps classify different classes: sweep_a has 2 (a, b), other_task has 2 (cat, dog)"),
        (["sweep_a", "old"], "sweep 'old' has no test predictions recorded"),
        (["sweep_a", "empty"], "empty: experiment 'empty' has no trial runs yet"),
    ]
    for arguments, message in refusals:
        assert_refused("compare", *arguments, message=message, cwd=project)
    assert not (project / "results" / "comparisons").exists()


def test_compare_refuses_two_sweeps_without_a_configuration_in_common(project, tmp_path):
    _recorded_sweep("cnn_sweep", tmp_path, correct=np.ones(10, bool))
    store.start_sweep_run("vgg_sweep", "params/vgg_sweep.yaml")
    log_predictions(recorded_trial("vgg_sweep", "vgg16", "torch", 0.9, 0.3, 0.8), np.ones(10, bool), tmp_path / "b")
    assert_refused("compare", "cnn_sweep", "vgg_sweep", message="no configuration of cnn_sweep matches one of vgg_sweep", cwd=project)
    helped = run_imagebench("compare", "--help", cwd=project)
    assert helped.returncode == 0 and "deltas are B minus A" in helped.stdout
