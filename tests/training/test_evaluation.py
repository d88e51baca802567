import numpy as np
import pytest

from imagebench.training.evaluation import DivergedError, evaluate, loss_and_accuracy


def test_metrics_from_probabilities():
    labels = np.array([0, 1, 2, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    result = evaluate(probs, labels, ["a", "b", "c"])
    assert result.metrics["test/accuracy"] == pytest.approx(0.75)
    assert "test/top5_accuracy" not in result.metrics  # only with more than 5 classes
    assert result.confusion.tolist() == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    assert "a" in result.report and result.metrics["test/loss"] == pytest.approx(-np.mean(np.log([0.8, 0.7, 0.7, 0.1])))


def test_top5_with_many_classes():
    labels = np.arange(10)
    probs = np.full((10, 10), 0.01)
    probs[np.arange(10), (labels + 1) % 10] = 0.9  # top-1 always wrong, true class in the top 5
    probs[np.arange(10), labels] = 0.05
    result = evaluate(probs / probs.sum(1, keepdims=True), labels, [str(i) for i in range(10)])
    assert result.metrics["test/accuracy"] == 0 and result.metrics["test/top5_accuracy"] == 1


def test_diverged_outputs():
    probs = np.array([[np.nan, np.nan], [0.5, 0.5]])
    loss, _ = loss_and_accuracy(probs, np.array([0, 1]))
    assert loss == np.inf
    with pytest.raises(DivergedError, match="lower learning_rate"):
        evaluate(probs, np.array([0, 1]), ["a", "b"])
