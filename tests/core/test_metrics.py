"""The metrics table (issue 21): each metric's MLflow key, leaderboard column, header, format and
direction defined once, and every reader takes the names from it."""

from helpers import REPO

from imagebench.core import metrics


def test_each_key_and_column_is_defined_once():
    keys = [metric.key for metric in metrics.METRICS]
    columns = [metric.column for metric in metrics.METRICS if metric.column] + [metrics.TEST_ACCURACY_CI95.column]
    assert len(keys) == len(set(keys)) and len(columns) == len(set(columns))
    assert metrics.EPOCH_METRICS == ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr")  # the recorded names
    assert set(metrics.FINAL_METRICS) == {"test/accuracy", "test/loss", "test/macro_f1", "test/top5_accuracy", "best_epoch",
                                          "best/val_accuracy", "best/val_loss", "epochs_run", "cost/params", "cost/trainable_params",
                                          "cost/train_seconds", "cost/latency_ms", "cost/flops", "cost/store_seconds",
                                          "cost/data_seconds", "cost/model_build_seconds", "cost/checkpoint_seconds",
                                          "cost/test_eval_seconds", "cost/latency_seconds", "cost/figures_seconds",
                                          "cost/weights_save_seconds", "cost/other_seconds"}  # fmt: skip
    # the ledger's parts a sweep adds around the kernel (a trial run on its own has none)
    assert {metric.key for metric in metrics.SWEEP_COSTS} == {"cost/kernel_seconds", "cost/papermill_seconds", "cost/notebook_seconds"}
    assert set(metrics.COSTS) == set(metrics.SWEEP_COSTS) | set(metrics.TRIAL_COSTS) and all(m.timing and m.header for m in metrics.COSTS)


def test_the_ranking_follows_the_directions_in_the_table():
    assert metrics.RANKING == ("best/val_accuracy", "best/val_loss")
    assert metrics.RANKING_ASCENDING == (False, True)
    scores = {"a": (0.9, 0.5), "b": (0.95, 0.7), "c": (0.9, 0.3)}
    assert sorted(scores, key=lambda name: metrics.ranking_key(*scores[name])) == ["b", "c", "a"]


def test_namespaced_metric_keys_are_typed_only_in_the_table():
    """Adding a metric touches the table and the code that computes it: nobody else retypes a key."""
    keys = [metric.key for metric in metrics.METRICS if "/" in metric.key]  # "lr" and "best_epoch" are also checkpoint fields
    for path in (REPO / "src" / "imagebench").rglob("*.py"):
        if path != REPO / "src" / "imagebench" / "core" / "metrics.py":
            text = path.read_text(encoding="utf-8")
            typed = [key for key in keys if f'"{key}"' in text or f"'{key}'" in text]
            assert not typed, f"{path} types {typed}; read them from imagebench.core.metrics"
