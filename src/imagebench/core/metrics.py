"""The metrics every trial records and the one rule that ranks trials."""

from __future__ import annotations
from imagebench.core.contract import ENV_ROOT, ENV_RUN_ID  # noqa: F401  (the sweep-kernel contract names them)


# The one selection rule, for the leaderboard and for halving's promotions: the best validation
# accuracy, ties to the lower validation loss. Test metrics never choose.
RANKING = ("best/val_accuracy", "best/val_loss")
RANKING_ASCENDING = (False, True)


def ranking_key(val_accuracy: float, val_loss: float) -> tuple[float, float]:
    """Sort key of RANKING: smaller is better."""
    return (-val_accuracy, val_loss)


EPOCH_METRICS = ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr")
FINAL_METRICS = (
    "test/accuracy",
    "test/loss",
    "test/macro_f1",
    "test/top5_accuracy",  # only with more than 5 classes
    "best_epoch",
    "best/val_accuracy",
    "best/val_loss",
    "epochs_run",
    "cost/params",
    "cost/trainable_params",
    "cost/train_seconds",
    "cost/latency_ms",
    "cost/flops",  # forward FLOPs per image (multiply-add = 2), counted in the trial's framework
)
