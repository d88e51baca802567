"""Is the leader really better? Tiers (McNemar / seeds, Holm), parity as an equivalence test (TOST)
and the Pareto front: hand-checked statistics, then the leaderboard built from a real MLflow store,
then the commands a user types."""

import math

import numpy as np
import pandas as pd
import pytest
from helpers import log_predictions, recorded_trial, seed_predictions, run_imagebench, run_shell, run_sweep, write_sweep_file
from readme_blocks import block

from imagebench import store
from imagebench.report import leaderboard, statistics

# ---- hand-checked statistics -------------------------------------------------------------------


def _correctness(both: int, first_only: int, second_only: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    first = np.array([True] * both + [True] * first_only + [False] * second_only + [False] * neither)
    second = np.array([True] * both + [False] * first_only + [True] * second_only + [False] * neither)
    return first, second


def test_mcnemar_exact_p_is_the_hand_computed_binomial():
    # b = 1, c = 9: p = 2 * (C(10,0) + C(10,1)) / 2^10 = 2 * 11 / 1024 = 0.021484375, whatever the concordant cells
    leader, row = _correctness(both=20, first_only=9, second_only=1, neither=6)
    comparison = statistics.mcnemar_comparison(leader, row)
    assert comparison.p == pytest.approx(22 / 1024) and comparison.reference_better
    assert statistics.mcnemar_comparison(row, leader).reference_better is False
    # b = 2, c = 6: 2 * (1 + 8 + 28) / 256 = 0.2890625: not shown different
    assert statistics.mcnemar_comparison(*_correctness(10, 6, 2, 0)).p == pytest.approx(74 / 256)


def test_smallest_detectable_difference():
    # all one way: p = 2 / 2^d, below 0.05 first at d = 6 (0.03125; d = 5 gives 0.0625)
    assert statistics.smallest_detectable_difference(36) == 6
    assert statistics.smallest_detectable_difference(5) is None


def test_holm_on_known_p_values():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 = 0.03, 0.06, 0.04 -> monotone: 0.03, 0.06, 0.06
    assert list(statistics.holm([0.01, 0.04, 0.03])) == pytest.approx([0.03, 0.06, 0.06])


def test_probability_of_improvement_over_seeds():
    # 3 x 3 pairs: the leader seed 0.9 beats all three, 0.8 beats 0.7 and ties 0.8 (half), 0.6 beats none: 4.5 / 9
    comparison = statistics.seeds_comparison([0.9, 0.8, 0.6], [0.7, 0.8, 0.85])
    assert comparison.probability == pytest.approx(4.5 / 9)
    assert comparison.low <= comparison.probability <= comparison.high
    # five seeds each, all leader seeds better: exact two-sided permutation p = 2 / C(10, 5) = 2 / 252
    apart = statistics.seeds_comparison([0.9, 0.91, 0.92, 0.93, 0.94], [0.5, 0.51, 0.52, 0.53, 0.54])
    assert apart.probability == 1.0 and apart.p == pytest.approx(2 / 252)


def test_tiers_tie_what_is_not_shown_worse_and_open_a_new_tier_below():
    leader, tied = _correctness(both=60, first_only=3, second_only=1, neither=16)  # p = 0.625
    _, worse = _correctness(both=50, first_only=13, second_only=1, neither=16)  # the leader right on 13 more: p < 0.01
    rows = [[seed_predictions(leader)], [seed_predictions(tied)], [seed_predictions(worse)], [], [seed_predictions(leader, "other")]]
    verdicts = statistics.assign_tiers(rows)
    assert [verdict.tier for verdict in verdicts] == [1, 1, 2, None, None]
    assert verdicts[2].p_vs_leader < 0.05 <= verdicts[1].p_vs_leader
    assert "no test predictions recorded" in verdicts[3].reason and "other test images" in verdicts[4].reason
    line = statistics.reading(["cnn", "cnn_attention", "vgg16", "old", "elsewhere"], rows, verdicts)
    assert line.startswith("cnn_attention is tied with the leader cnn; vgg16 is worse, p = ")
    assert "No tier for old: no test predictions recorded" in line and "elsewhere: other test images" in line
    assert "With 80 test images, two models must differ on at least 6 images" in line


def test_a_leader_without_predictions_leaves_every_tier_blank():
    verdicts = statistics.assign_tiers([[], [seed_predictions(np.ones(10, bool))]])
    assert [verdict.tier for verdict in verdicts] == [None, None]
    assert statistics.reading(["cnn", "vgg16"], [[], []], verdicts).startswith("Tiers unavailable: the leader has no test predictions")


def test_tost_says_equivalent_only_when_the_difference_is_shown_inside_the_margin():
    # 400 images, the two frameworks disagree on 4, two each way: mean difference 0, tiny spread
    keras, torch = _correctness(both=300, first_only=2, second_only=2, neither=96)
    statement, p = statistics.equivalence([seed_predictions(keras)], [seed_predictions(torch)], margin=0.05)
    assert statement.startswith("equivalent within ±5 points") and p < 0.05
    # 40 images, 6 against 2: an estimated 10-point gap: not shown within ±5 points
    keras, torch = _correctness(both=24, first_only=6, second_only=2, neither=8)
    statement, p = statistics.equivalence([seed_predictions(keras)], [seed_predictions(torch)], margin=0.05)
    assert statement.startswith("not shown equivalent within ±5 points") and p >= 0.05 and "+10.0 points" in statement
    assert statistics.equivalence([seed_predictions(keras)], [seed_predictions(torch, "other")])[0] == "not tested: the frameworks' test images differ"


def test_pareto_front_on_a_hand_made_table():
    table = pd.DataFrame({"test_accuracy": [0.90, 0.80, 0.85, 0.70, np.nan],
                          "latency_ms": [10.0, 5.0, 20.0, 5.0, 1.0], "params": [100, 50, 10, 200, 1]})  # fmt: skip
    labels = ["big", "fast", "small", "slow", "failed"]
    columns = statistics.pareto_columns(table, "test_accuracy", {"latency": "latency_ms", "params": "params"}, labels)
    # latency: big (most accurate) and fast (cheapest); small is slower and less accurate than big; slow loses to fast
    # params: small (cheapest) and big (most accurate); small beats fast (fewer params, more accurate); slow loses
    # to all three, the most accurate being big. The row without a test accuracy is on no front and beaten by none.
    assert list(columns["pareto"]) == ["latency, params", "latency", "params", "", ""]
    assert list(columns["dominated_by"]) == ["", "small (params)", "big (latency)", "fast (latency); big (params)", ""]


# ---- the leaderboard from a real MLflow store ----------------------------------------------------


def test_leaderboard_tiers_parity_and_pareto_from_the_record(project, tmp_path):
    leader, tied = _correctness(both=60, first_only=3, second_only=1, neither=16)
    _, worse = _correctness(both=50, first_only=13, second_only=1, neither=16)
    recorded = [("cnn", "torch", 0.90, leader), ("cnn_attention", "torch", 0.85, tied), ("vgg16", "torch", 0.80, worse),
                ("cnn", "keras", 0.75, leader)]  # fmt: skip
    for model, framework, val_acc, correct in recorded:
        run_id = recorded_trial("stats", model, framework, val_acc, 0.3, test_acc=float(correct.mean()))
        log_predictions(run_id, correct, tmp_path)
    recorded_trial("stats", "resnet50", "torch", 0.70, 0.3, test_acc=0.99)  # recorded before predictions were logged
    board = leaderboard.build("stats", parity_margin=0.05)
    table = board.leaders.set_index(board.leaders["framework"] + "/" + board.leaders["model"])
    tiers = table["tier"].astype(object).where(table["tier"].notna(), None).to_dict()
    assert tiers == {"torch/cnn": 1, "torch/cnn_attention": 1, "torch/vgg16": 2, "keras/cnn": 1, "torch/resnet50": None}
    assert table.loc["torch/vgg16", "p_vs_leader"] < 0.05 and math.isnan(table.loc["torch/resnet50", "p_vs_leader"])
    assert board.reading.startswith("torch/cnn_attention and keras/cnn are tied with the leader torch/cnn; torch/vgg16 is worse, p = ")
    assert "No tier for torch/resnet50: no test predictions recorded" in board.reading
    # resnet50: 0.99 on test with the fewest params (1,700) and the same latency and FLOPs as every row: it alone is the front
    assert table.loc["torch/resnet50", "pareto"] == "latency, flops, params" and (table["pareto"] != "").sum() == 1
    assert table.loc["torch/vgg16", "dominated_by"] == "torch/resnet50 (latency, flops, params)"
    for name in ("accuracy_vs_params", "accuracy_vs_latency", "accuracy_vs_flops"):  # the front drawn on each cost plot
        assert "Pareto front" in board.figures[name].axes[0].get_legend_handles_labels()[1], name
    parity = board.parity.set_index("model")
    assert parity.loc["cnn", "equivalence"].startswith("equivalent within ±5 points (TOST p < 0.001; difference +0.0 points on 80")
    assert parity.loc["cnn_attention", "equivalence"] == ""  # PyTorch only: nothing to compare


def test_a_leaderboard_recorded_before_predictions_builds_and_says_so(project):
    recorded_trial("old", "cnn", "torch", 0.9, 0.3, 0.8)
    recorded_trial("old", "vgg16", "torch", 0.8, 0.3, 0.7)
    board = leaderboard.build("old", with_figures=False)
    assert board.leaders["tier"].isna().all()
    assert board.reading == f"Tiers unavailable: the leader has {statistics.NO_PREDICTIONS}."


# ---- the commands a user types ---------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_then_leaderboard_show_tiers_p_values_and_the_reading(project):
    """The reviewer tutorial's line after a tiny sweep of two models (30 test images, ~30 s)."""
    sweep_file = write_sweep_file(project, "tiers", "{model: [cnn, cnn_attention]}", epochs=2)
    swept = run_sweep(project, sweep_file)
    assert swept.returncode == 0, swept.stdout + swept.stderr
    [line] = block("leaderboard-statistics").commands(EXPERIMENT="tiers")  # docs/tutorials/reviewer.md
    built = run_shell(line, project)
    assert built.returncode == 0, built.stdout + built.stderr
    print(built.stdout)  # the reviewer tutorial's example output
    assert "Reading: cnn" in built.stdout and "the leader" in built.stdout
    assert "With 30 test images, two models must differ on at least 6 images" in built.stdout
    out = project / "results" / "tiers"
    table = pd.read_csv(out / "leaderboard.csv")
    assert {"tier", "p_vs_leader", "pareto", "dominated_by"} <= set(table.columns)
    assert table["tier"].iloc[0] == 1 and table["tier"].notna().all() and table["p_vs_leader"].iloc[1] <= 1
    markdown = (out / "leaderboard.md").read_text()
    assert "| tier |" in markdown.replace("|   tier |", "| tier |").replace("|  tier |", "| tier |") and "p_vs_leader" in markdown
    assert "**Reading:** cnn" in markdown and "<b>Reading:</b> cnn" in (out / "leaderboard.html").read_text()
    description = store.client().get_run(store.find_sweep_run("tiers")).data.tags[store.TAG_NOTE]  # the parent run's
    assert "**Reading:** cnn" in description and "| tier |" in description.replace("|   tier |", "| tier |")
    refused = run_imagebench("leaderboard", "--experiment", "tiers", "--parity-margin", "5", cwd=project)
    assert refused.returncode == 2 and "--parity-margin" in refused.stderr
