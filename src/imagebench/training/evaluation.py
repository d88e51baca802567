"""Metrics from predicted probabilities, identical for both frameworks (scikit-learn does the math)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score, log_loss, top_k_accuracy_score

from imagebench.core import metrics

TOP_K = 5


class DivergedError(ArithmeticError):
    """The model produced NaN/inf outputs."""


def loss_and_accuracy(probabilities: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Cross-entropy (no regulariser) and accuracy; used for val each epoch in both backends.

    A diverged model (NaN outputs) scores an infinite loss, so early stopping keeps the last good epoch.
    """
    if not np.isfinite(probabilities).all():
        return math.inf, float(accuracy_score(labels, np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1)))
    num_classes = probabilities.shape[1]
    loss = log_loss(labels, np.clip(probabilities, 1e-7, 1.0), labels=list(range(num_classes)))
    return float(loss), float(accuracy_score(labels, probabilities.argmax(axis=1)))


@dataclass
class Evaluation:
    metrics: dict[str, float]
    confusion: np.ndarray
    report: str


def evaluate(probabilities: np.ndarray, labels: np.ndarray, class_names: list[str]) -> Evaluation:
    if not np.isfinite(probabilities).all():
        raise DivergedError("the model outputs NaN/inf on the test set: training diverged; lower learning_rate or add l2")
    num_classes = len(class_names)
    predictions = probabilities.argmax(axis=1)
    loss, accuracy = loss_and_accuracy(probabilities, labels)
    values = {
        metrics.TEST_ACCURACY.key: accuracy,
        metrics.TEST_LOSS.key: loss,
        metrics.TEST_MACRO_F1.key: float(f1_score(labels, predictions, average="macro", labels=list(range(num_classes)), zero_division=0)),
    }
    if num_classes > TOP_K:
        values[metrics.TEST_TOP5_ACCURACY.key] = float(
            top_k_accuracy_score(labels, probabilities, k=TOP_K, labels=list(range(num_classes)))
        )
    matrix = confusion_matrix(labels, predictions, labels=list(range(num_classes)))
    report = classification_report(
        labels, predictions, labels=list(range(num_classes)), target_names=class_names, digits=4, zero_division=0
    )
    return Evaluation(metrics=values, confusion=matrix, report=report)
