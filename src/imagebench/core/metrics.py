"""The metrics table: every metric a trial records, defined once, and the one rule that ranks trials.

Each ``Metric`` says its MLflow key, its leaderboard column (if the leaderboard shows it), the header
and number format a person reads, which way is better and whether it is logged every epoch or once
at the end. The trial, the leaderboard, its HTML page, the plots, the sweep's summary and the
parent-run report all read the names from here: adding a metric means a line in ``METRICS`` and
the code that computes it.
"""

from __future__ import annotations

from dataclasses import dataclass

# which way is better (``Metric.better``)
HIGHER, LOWER = "higher", "lower"
# how a column's numbers are shown to people (``Metric.format``; the HTML page applies them)
PERCENT, PLUS_MINUS_PERCENT, MILLIONS, GFLOPS, MILLISECONDS = "percent", "plus_minus_percent", "millions", "gflops", "ms"


@dataclass(frozen=True)
class Metric:
    key: str  # the MLflow metric key
    column: str = ""  # the leaderboard's column; "" = not in the leaderboard
    header: str = ""  # the column's header for people; "" = the column with spaces for underscores
    format: str = ""  # PERCENT, MILLIONS, ...; "" = 4 significant digits
    better: str = ""  # HIGHER or LOWER is better; "" = neither
    per_epoch: bool = False  # logged at every epoch (step = epoch), else once when the trial ends
    count: bool = False  # a whole number (MLflow stores floats; a mean over seeds is rounded)
    timing: bool = False  # a measured duration: differs run to run, so never part of "reproduced"

    @property
    def title(self) -> str:
        return self.header or self.column.replace("_", " ")


TRAIN_LOSS = Metric("train/loss", better=LOWER, per_epoch=True)
TRAIN_ACCURACY = Metric("train/accuracy", better=HIGHER, per_epoch=True)
VAL_LOSS = Metric("val/loss", better=LOWER, per_epoch=True)
VAL_ACCURACY = Metric("val/accuracy", better=HIGHER, per_epoch=True)
LEARNING_RATE = Metric("lr", per_epoch=True)

# the final metrics, in the order of the leaderboard's columns
TEST_ACCURACY = Metric("test/accuracy", "test_accuracy", "test accuracy", PERCENT, HIGHER)
TEST_LOSS = Metric("test/loss", "test_loss", better=LOWER)
TEST_MACRO_F1 = Metric("test/macro_f1", "test_macro_f1", format=PERCENT, better=HIGHER)
TEST_TOP5_ACCURACY = Metric("test/top5_accuracy", "test_top5_accuracy", format=PERCENT, better=HIGHER)  # > 5 classes only
# the epoch whose weights were kept (restored best), and its validation numbers: the leaderboard
# selects on these, because the last logged val/accuracy is the last epoch's, not the chosen one
BEST_VAL_ACCURACY = Metric("best/val_accuracy", "val_accuracy", "validation accuracy", PERCENT, HIGHER)
BEST_VAL_LOSS = Metric("best/val_loss", "val_loss", better=LOWER)
BEST_EPOCH = Metric("best_epoch", "best_epoch", count=True)
PARAMS = Metric("cost/params", "params", format=MILLIONS, better=LOWER, count=True)
# forward FLOPs per image (multiply-add = 2), counted in the trial's framework
FLOPS = Metric("cost/flops", "flops", "FLOPs / image", GFLOPS, LOWER, count=True)
TRAINABLE_PARAMS = Metric("cost/trainable_params", "trainable_params", format=MILLIONS, count=True)
TRAIN_SECONDS = Metric("cost/train_seconds", "train_seconds", "train s", better=LOWER, timing=True)
LATENCY_MS = Metric("cost/latency_ms", "latency_ms", "latency", MILLISECONDS, LOWER, timing=True)
# the trial's own writes to the MLflow store (every request, retries included; not the last, its end)
STORE_SECONDS = Metric("cost/store_seconds", header="store writes", better=LOWER, timing=True)
EPOCHS_RUN = Metric("epochs_run")  # epochs trained (fewer than asked after early stopping)

# The cost ledger: where a trial's wall time outside its epochs went, in seconds. Disjoint: a store
# write inside any phase (an artifact, the epoch metrics sent while training) counts in STORE_SECONDS
# only, and OTHER_SECONDS is what is left of the trial's wall time. A trial continued in rungs
# (halving) sums its rungs, like TRAIN_SECONDS. Costs recorded in the trial's kernel:
DATA_SECONDS = Metric("cost/data_seconds", header="data", better=LOWER, timing=True)  # weights check, decode cache, splits
MODEL_BUILD_SECONDS = Metric("cost/model_build_seconds", header="model build / imports", better=LOWER, timing=True)  # frozen: + features
CHECKPOINT_SECONDS = Metric("cost/checkpoint_seconds", header="rung checkpoint", better=LOWER, timing=True)  # halving only
TEST_EVAL_SECONDS = Metric("cost/test_eval_seconds", header="test evaluation", better=LOWER, timing=True)
LATENCY_SECONDS = Metric("cost/latency_seconds", header="latency and FLOPs", better=LOWER, timing=True)
FIGURES_SECONDS = Metric("cost/figures_seconds", header="figures", better=LOWER, timing=True)
WEIGHTS_SAVE_SECONDS = Metric("cost/weights_save_seconds", header="kept weights", better=LOWER, timing=True)
OTHER_SECONDS = Metric("cost/other_seconds", header="other", better=LOWER, timing=True)
TRIAL_COSTS = (DATA_SECONDS, MODEL_BUILD_SECONDS, CHECKPOINT_SECONDS, TEST_EVAL_SECONDS, LATENCY_SECONDS,
               FIGURES_SECONDS, WEIGHTS_SAVE_SECONDS, STORE_SECONDS, OTHER_SECONDS)  # fmt: skip
# ... and by the sweep around the kernel (a trial run on its own has none): the kernel's start (or
# its reuse: a kept kernel's ~ms), papermill's own work between and around the cells (parameters,
# the notebook's other cells, messages), and writing the executed notebook (to disk while it runs,
# then attached to the run).
KERNEL_SECONDS = Metric("cost/kernel_seconds", header="kernel start", better=LOWER, timing=True)
PAPERMILL_SECONDS = Metric("cost/papermill_seconds", header="papermill", better=LOWER, timing=True)
NOTEBOOK_SECONDS = Metric("cost/notebook_seconds", header="notebook write-back", better=LOWER, timing=True)
SWEEP_COSTS = (KERNEL_SECONDS, PAPERMILL_SECONDS, NOTEBOOK_SECONDS)
COSTS = SWEEP_COSTS + TRIAL_COSTS  # the ledger, in the order a trial spends it (the stacked bar's order)

METRICS = (TRAIN_LOSS, TRAIN_ACCURACY, VAL_LOSS, VAL_ACCURACY, LEARNING_RATE,
           TEST_ACCURACY, TEST_LOSS, TEST_MACRO_F1, TEST_TOP5_ACCURACY, BEST_VAL_ACCURACY, BEST_VAL_LOSS, BEST_EPOCH,
           PARAMS, FLOPS, TRAINABLE_PARAMS, TRAIN_SECONDS, LATENCY_MS, EPOCHS_RUN, *TRIAL_COSTS, *SWEEP_COSTS)  # fmt: skip
EPOCH_METRICS = tuple(metric.key for metric in METRICS if metric.per_epoch)
# what every trial records when it ends (the sweep adds SWEEP_COSTS to a trial it ran)
FINAL_METRICS = tuple(metric.key for metric in METRICS if not metric.per_epoch and metric not in SWEEP_COSTS)
LEADERBOARD_METRICS = tuple(metric for metric in METRICS if metric.column)  # in column order

# Not recorded: the leaderboard derives it from the seeds' test accuracies (Student's t half-width)
TEST_ACCURACY_CI95 = Metric("", "test_accuracy_ci95", "± 95% CI", PLUS_MINUS_PERCENT)
COLUMNS = {metric.column: metric for metric in (*LEADERBOARD_METRICS, TEST_ACCURACY_CI95)}

# The one selection rule, for the leaderboard and for halving's promotions: the best validation
# accuracy, ties to the lower validation loss. Test metrics never choose.
RANKED_ON = (BEST_VAL_ACCURACY, BEST_VAL_LOSS)
RANKING = tuple(metric.key for metric in RANKED_ON)
RANKING_ASCENDING = tuple(metric.better == LOWER for metric in RANKED_ON)


def ranking_key(val_accuracy: float, val_loss: float) -> tuple[float, float]:
    """Sort key of RANKING: smaller is better."""
    return tuple(-value if metric.better == HIGHER else value for metric, value in zip(RANKED_ON, (val_accuracy, val_loss)))
