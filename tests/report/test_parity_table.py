"""The framework parity table: per model, Keras next to PyTorch, flagged where they disagree."""

import pandas as pd

from imagebench.report.leaderboard import parity_table


def _leader(model, framework, params, accuracy, ci=float("nan")):
    return {"model": model, "framework": framework, "params": params, "flops": 2e7, "test_accuracy": accuracy,
            "test_accuracy_ci95": ci, "latency_ms": 1.0, "train_seconds": 5.0}


def test_parity_sets_frameworks_side_by_side_and_flags_disagreement():
    leaders = pd.DataFrame([
        _leader("cnn", "keras", 1000, 0.90, 0.01), _leader("cnn", "torch", 1000, 0.91, 0.01),  # intervals overlap
        _leader("resnet50", "keras", 1000, 0.70, 0.01), _leader("resnet50", "torch", 1030, 0.90, 0.01),  # both flags
        _leader("vgg16", "keras", 1000, 0.5),  # one seed, one framework: nothing to flag
    ])
    table = parity_table(leaders).set_index("model")
    assert list(table.columns[:4]) == ["keras_params", "torch_params", "keras_flops", "torch_flops"]
    assert table.loc["cnn", "flag"] == ""
    assert table.loc["resnet50", "flag"] == "params differ by 2.9%; test accuracy CIs do not overlap"
    assert table.loc["vgg16", "flag"] == "" and pd.isna(table.loc["vgg16", "torch_params"])
