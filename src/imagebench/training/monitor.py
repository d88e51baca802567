"""Per-epoch decisions shared by both frameworks: learning-rate schedule, early stopping, best epoch.

Both backends ask this object for the epoch's learning rate and report each epoch's numbers to
it, so "patience 5 on val_loss, restore best weights" and "step decay x0.5 every 7 epochs" mean
exactly the same in Keras and PyTorch.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from imagebench.core import metrics
from imagebench.core.params import TrialParams

MIN_LEARNING_RATE = 1e-7


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The stream for one epoch's shuffle and augmentation draws.

    Derived from (seed, epoch) alone, so a trial continued from a checkpoint (halving rungs) draws
    exactly what an uninterrupted run would have drawn, in both frameworks.
    """
    return np.random.default_rng([seed, epoch])


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float = 0.0

    def as_metrics(self) -> dict[str, float]:
        return {
            metrics.TRAIN_LOSS.key: self.train_loss,
            metrics.TRAIN_ACCURACY.key: self.train_accuracy,
            metrics.VAL_LOSS.key: self.val_loss,
            metrics.VAL_ACCURACY.key: self.val_accuracy,
            metrics.LEARNING_RATE.key: self.lr,
        }


@dataclass
class EpochMonitor:
    params: TrialParams
    on_epoch: Optional[Callable[[EpochRecord], None]] = None
    history: list[EpochRecord] = field(default_factory=list)
    best: Optional[EpochRecord] = None
    _lr: float = 0.0
    _epochs_since_best: int = 0
    _epochs_since_plateau_drop: int = 0
    _plateau_best_loss: float = math.inf

    def __post_init__(self) -> None:
        self._lr = self.params.learning_rate

    # --- learning rate
    def lr_for_epoch(self, epoch: int) -> float:
        """Learning rate to use during 1-based ``epoch``."""
        p = self.params
        if p.lr_schedule == "step":
            return p.learning_rate * p.lr_decay_factor ** ((epoch - 1) // p.lr_step_epochs)
        if p.lr_schedule == "cosine":
            progress = (epoch - 1) / max(p.epochs, 1)
            return MIN_LEARNING_RATE + 0.5 * (p.learning_rate - MIN_LEARNING_RATE) * (1 + math.cos(math.pi * progress))
        return self._lr  # "none" keeps the initial rate; "plateau" holds what end_epoch decided

    # --- epoch bookkeeping
    def _is_improvement(self, record: EpochRecord) -> bool:
        if self.best is None:
            return True
        if self.params.early_stopping_monitor == "val_accuracy":
            return record.val_accuracy > self.best.val_accuracy
        return record.val_loss < self.best.val_loss

    def _update_plateau(self, record: EpochRecord) -> None:
        if record.val_loss < self._plateau_best_loss:
            self._plateau_best_loss = record.val_loss
            self._epochs_since_plateau_drop = 0
            return
        self._epochs_since_plateau_drop += 1
        if self._epochs_since_plateau_drop >= self.params.lr_plateau_patience:
            self._lr = max(self._lr * self.params.lr_decay_factor, MIN_LEARNING_RATE)
            self._epochs_since_plateau_drop = 0

    def end_epoch(self, record: EpochRecord) -> bool:
        """Record one epoch; return True when this epoch is the new best (its weights must be kept)."""
        self.history.append(record)
        improved = self._is_improvement(record)
        if improved:
            self.best = record
            self._epochs_since_best = 0
        else:
            self._epochs_since_best += 1
        if self.params.lr_schedule == "plateau":
            self._update_plateau(record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        return improved

    @property
    def should_stop(self) -> bool:
        patience = self.params.early_stopping_patience
        return patience > 0 and self._epochs_since_best >= patience

    @property
    def best_epoch(self) -> int:
        return self.best.epoch if self.best else 0

    @property
    def next_epoch(self) -> int:
        """1-based number of the epoch to train next (> 1 when continued from a checkpoint)."""
        return len(self.history) + 1

    def last_epoch(self, epoch_budget: Optional[int]) -> int:
        """Last epoch to train in this call: the trial's epochs, or fewer for a halving rung."""
        return min(self.params.epochs, epoch_budget or self.params.epochs)

    def has_epochs_left(self, epoch_budget: Optional[int]) -> bool:
        return not self.should_stop and self.next_epoch <= self.last_epoch(epoch_budget)

    # --- checkpoints: everything above that a continued run needs
    def state(self) -> dict[str, Any]:
        return {
            "history": [asdict(record) for record in self.history],
            "best_epoch": self.best_epoch,
            "lr": self._lr,
            "epochs_since_best": self._epochs_since_best,
            "epochs_since_plateau_drop": self._epochs_since_plateau_drop,
            "plateau_best_loss": self._plateau_best_loss,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.history = [EpochRecord(**record) for record in state["history"]]
        self.best = next((r for r in self.history if r.epoch == state["best_epoch"]), None)
        self._lr = state["lr"]
        self._epochs_since_best = state["epochs_since_best"]
        self._epochs_since_plateau_drop = state["epochs_since_plateau_drop"]
        self._plateau_best_loss = state["plateau_best_loss"]
