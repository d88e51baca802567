"""The trial's two figures are redrawn on figures the process keeps (issue 24: ~35% of a figure's
cost is building it): the PNG a trial records must be the one a figure drawn afresh gives."""

import numpy as np

from imagebench.core import plots


def _history(epochs: int, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    return {"train/loss": list(np.sort(rng.random(epochs))[::-1] * 2), "val/loss": list(np.sort(rng.random(epochs))[::-1] * 2.5),
            "train/accuracy": list(np.sort(rng.random(epochs))), "val/accuracy": list(np.sort(rng.random(epochs)))}  # fmt: skip


def test_kept_learning_curves_draw_what_a_new_figure_draws():
    # one kept figure through trials of other lengths, ranges, best epochs and titles
    for epochs, seed, best in [(10, 0, 7), (3, 1, 2), (25, 2, 20), (2, 3, 1), (10, 4, 10)]:
        history, title = _history(epochs, seed), f"torch / cnn {seed}"
        assert plots.learning_curves_png(history, title, best) == plots.png_bytes(plots.learning_curves(history, title, best))


def test_a_kept_confusion_matrix_draws_what_a_new_figure_draws():
    rng = np.random.default_rng(0)
    for names in ([str(i) for i in range(10)], ["cat", "dog", "사과"], [f"c{i}" for i in range(40)], [str(i) for i in range(10)]):
        for seed in range(2):
            matrix = np.diag(rng.integers(5, 30, len(names)))
            matrix[0, 1], matrix[-1, 0] = rng.integers(0, 4), 2
            title = f"test confusion matrix ({seed})"
            assert plots.confusion_matrix_png(matrix, names, title) == plots.png_bytes(plots.confusion_matrix(matrix, names, title))
