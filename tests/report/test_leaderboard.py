"""Leaderboard selection from a real MLflow store: chosen on validation, never on test."""

import pytest
from helpers import recorded_trial

from imagebench.report import leaderboard
from imagebench import store


def test_leader_is_chosen_on_validation_even_when_test_disagrees(project):
    on_val = recorded_trial("lb", "cnn", "keras", val_acc=0.90, val_loss=0.3, test_acc=0.50)
    recorded_trial("lb", "cnn", "keras", val_acc=0.80, val_loss=0.2, test_acc=0.99)  # better on test: must NOT win
    recorded_trial("lb", "cnn", "keras", val_acc=0.0, val_loss=0.0, test_acc=0.0, status="FAILED")
    board = leaderboard.build("lb", with_figures=False)
    row = board.leaders.iloc[0]
    assert len(board.leaders) == 1
    assert row["run_id"] == on_val and row["test_accuracy"] == pytest.approx(0.50)
    assert (row["finished"], row["failed"]) == (2, 1)
    assert row["learning_rate"] == "0.009"


def test_validation_ties_go_to_lower_validation_loss(project):
    recorded_trial("tie", "vgg16", "torch", val_acc=0.9, val_loss=0.5, test_acc=0.9)
    lower_loss = recorded_trial("tie", "vgg16", "torch", val_acc=0.9, val_loss=0.4, test_acc=0.1)
    assert leaderboard.build("tie", with_figures=False).leaders.iloc[0]["run_id"] == lower_loss


def test_one_row_per_model_and_framework_ranked_by_validation(project):
    recorded_trial("many", "cnn", "keras", 0.7, 0.5, 0.7)
    recorded_trial("many", "cnn", "torch", 0.9, 0.5, 0.6)
    recorded_trial("many", "resnet50", "torch", 0.8, 0.5, 0.95)
    recorded_trial("many", "resnet50", "keras", 0.0, 0.0, 0.0, status="FAILED")
    board = leaderboard.build("many", with_figures=False)
    assert list(zip(board.leaders["framework"], board.leaders["model"]))[:3] == [("torch", "cnn"), ("torch", "resnet50"), ("keras", "cnn")]
    failed_only = board.leaders[(board.leaders["model"] == "resnet50") & (board.leaders["framework"] == "keras")].iloc[0]
    assert failed_only["failed"] == 1 and failed_only["finished"] == 0
    assert board.winner["framework"] == "torch" and board.winner["model"] == "cnn"


def test_written_outputs_and_figures(project, tmp_path):
    recorded_trial("files", "cnn", "keras", 0.7, 0.5, 0.7)
    recorded_trial("files", "cnn_attention", "torch", 0.8, 0.4, 0.75)
    board = leaderboard.build("files")
    assert set(board.figures) == {
        "test_accuracy_by_model", "accuracy_vs_params", "accuracy_vs_latency", "leader_learning_curves", "winner_confusion_matrix",
        "accuracy_by_learning_rate", "accuracy_vs_flops",
    }
    written = {path.name for path in leaderboard.write(board, tmp_path / "out")}
    assert {"leaderboard.md", "leaderboard.html", "leaderboard.csv", "trials.csv", "winner_confusion_matrix.png"} <= written
    markdown = (tmp_path / "out" / "leaderboard.md").read_text()
    assert "cnn_attention" in markdown and "| rank |" in markdown.replace("|   rank |", "| rank |")
    assert "<img src=\"data:image/png;base64," in (tmp_path / "out" / "leaderboard.html").read_text()


def test_flops_column_next_to_params_and_runs_recorded_without_it(project):
    recorded_trial("flops", "cnn", "keras", 0.7, 0.5, 0.7)
    table = leaderboard.build("flops", with_figures=False).leaders
    assert list(table.columns).index("flops") == list(table.columns).index("params") + 1
    assert table.iloc[0]["flops"] == 21_170_688 and str(table["flops"].dtype) == "Int64"
    recorded_trial("older", "cnn", "keras", 0.7, 0.5, 0.7, flops=None)
    recorded_trial("older", "cnn_attention", "torch", 0.8, 0.4, 0.75, flops=None)
    board = leaderboard.build("older")
    assert "flops" not in board.leaders and "accuracy_vs_flops" not in board.figures


def test_missing_experiment_is_a_clear_error(project):
    with pytest.raises(leaderboard.LeaderboardError, match="no MLflow experiment 'nope'"):
        leaderboard.build("nope")


def test_seeds_of_one_configuration_are_averaged_and_counts_stay_whole(project):
    """Repeated seeds: the metrics are means (best_epoch 3 and 4 -> 4, not a cast error), CI and seed count shown."""
    for seed, (val_acc, test_acc, best_epoch) in enumerate(((0.9, 0.8, 3), (0.8, 0.9, 4))):
        run_id = store.create_trial_run("seeds", f"torch-cnn-seed{seed}", {store.TAG_MODEL: "cnn", store.TAG_FRAMEWORK: "torch",
                                                                             store.TAG_CONFIG: "same-config"}, None)  # fmt: skip
        store.log_params(run_id, {"learning_rate": "0.001", "optimizer": "adam", "seed": str(seed)})
        store.log_metrics(run_id, {"best/val_accuracy": val_acc, "best/val_loss": 0.3, "test/accuracy": test_acc,
                                      "cost/params": 1000, "cost/flops": 2000, "best_epoch": best_epoch})  # fmt: skip
        store.end_run(run_id, "FINISHED", None)
    row = leaderboard.build("seeds", with_figures=False).leaders.iloc[0]
    assert row["seeds"] == 2 and row["best_epoch"] == 4 and row["params"] == 1000
    assert row["test_accuracy"] == pytest.approx(0.85) and row["test_accuracy_ci95"] > 0
