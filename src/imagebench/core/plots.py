"""Figures for trials and leaderboards. Pure matplotlib ``Figure`` objects (no pyplot state), so the
same code draws into a notebook cell, an MLflow artifact and a PNG under results/."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imagebench.core import metrics

CURVE_PAIRS = (("loss", metrics.TRAIN_LOSS.key, metrics.VAL_LOSS.key), ("accuracy", metrics.TRAIN_ACCURACY.key, metrics.VAL_ACCURACY.key))
# what the figures read: the leaders' test accuracy (a leaderboard column) and each trial's best validation
# accuracy (the trials table keeps the MLflow keys)
TEST_ACCURACY, BEST_VAL_ACCURACY = metrics.TEST_ACCURACY.column, metrics.BEST_VAL_ACCURACY.key
# Class names are often Korean (docs/lessons.md): DejaVu Sans has no Hangul, so glyphs it lacks fall back
# to NanumGothic, shipped by the koreanize-matplotlib package (its fonts only; its rc changes are not used).
HANGUL_FONT_PACKAGE = "koreanize_matplotlib"


def _use_hangul_fallback() -> None:
    import importlib.util

    import matplotlib
    from matplotlib import font_manager

    spec = importlib.util.find_spec(HANGUL_FONT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return  # not installed: Latin names still draw; Hangul shows as boxes
    fonts = Path(list(spec.submodule_search_locations)[0]) / "fonts" / "NanumGothic.ttf"
    if fonts.is_file():
        font_manager.fontManager.addfont(str(fonts))
        families = [name for name in matplotlib.rcParams["font.family"] if name != "NanumGothic"]
        if families == ["sans-serif"]:
            families = [matplotlib.rcParams["font.sans-serif"][0]]
        matplotlib.rcParams["font.family"] = [*families, "NanumGothic"]


_use_hangul_fallback()


def png_bytes(figure: Figure, dpi: float | str = "figure") -> bytes:
    """The figure as PNG. zlib level 1: every trial draws two, and level 6 (Pillow's default) costs
    ~20 ms more per figure for files a few KB smaller."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, pil_kwargs={"compress_level": 1})
    return buffer.getvalue()


def learning_curves(history: Mapping[str, Sequence[float]], title: str = "", best_epoch: int | None = None) -> Figure:
    """``history`` maps metric names (train/loss, val/accuracy, ...) to per-epoch values."""
    # Fixed margins instead of layout="constrained": every trial draws this figure, and the layout
    # solver alone costs ~0.1 s of a ~0.2 s figure; the contents here always fit these margins.
    figure = Figure(figsize=(10, 3.6))
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.14, top=0.86, wspace=0.22)
    axes = figure.subplots(1, 2)
    for axis, (label, train_key, val_key) in zip(axes, CURVE_PAIRS):
        for key, style, name in ((train_key, "-", "train"), (val_key, "--", "validation")):
            values = history.get(key, [])
            axis.plot(range(1, len(values) + 1), values, style, marker="o", markersize=3, label=name)
        if best_epoch:
            axis.axvline(best_epoch, color="grey", linewidth=0.8, linestyle=":", label=f"best epoch {best_epoch}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        # whole epochs, and fewer ticks than the default ~10: each is a text to lay out on every trial's figure
        axis.xaxis.set_major_locator(MaxNLocator(6, integer=True))
        axis.yaxis.set_major_locator(MaxNLocator(5))
    axes[0].legend(fontsize=8)  # one legend: both panels draw train, validation and the best epoch alike
    figure.suptitle(title)
    return figure


class _CurvesTemplate:
    """``learning_curves`` built once per process and redrawn with each trial's numbers: building a
    figure's axes, ticks and legend costs about a third of drawing it, and every trial draws one.
    Only its PNG leaves (``learning_curves_png``): no caller ever holds the figure that is reused."""

    def __init__(self) -> None:
        self.figure = learning_curves({}, " ", 1)
        self.legend_best = self.figure.axes[0].get_legend().get_texts()[2]

    def png(self, history: Mapping[str, Sequence[float]], title: str, best_epoch: int) -> bytes:
        for axis, (_label, train_key, val_key) in zip(self.figure.axes, CURVE_PAIRS):
            train, validation, best = axis.get_lines()
            for line, key in ((train, train_key), (validation, val_key)):
                values = history.get(key, [])
                line.set_data(range(1, len(values) + 1), values)
            best.set_xdata([best_epoch, best_epoch])
            axis.relim()
            axis.autoscale_view()
        self.legend_best.set_text(f"best epoch {best_epoch}")
        self.figure.texts[0].set_text(title)  # the suptitle
        return png_bytes(self.figure)


_curves_template: _CurvesTemplate | None = None


def learning_curves_png(history: Mapping[str, Sequence[float]], title: str = "", best_epoch: int | None = None) -> bytes:
    """The PNG of ``learning_curves(history, title, best_epoch)``, drawn on a figure kept for the next call."""
    global _curves_template
    if not best_epoch:  # (a trial always has one; a figure without the line is drawn afresh)
        return png_bytes(learning_curves(history, title, best_epoch))
    if _curves_template is None:
        _curves_template = _CurvesTemplate()
    return _curves_template.png(history, title, best_epoch)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> Figure:
    size = max(4.0, 0.45 * len(class_names) + 2)
    figure = Figure(figsize=(size, size))  # margins computed, not solved: drawn for every trial
    label_inches = 0.6 + 0.075 * max((len(str(name)) for name in class_names), default=1)  # 8-pt tick labels
    figure.subplots_adjust(left=label_inches / size, bottom=label_inches / size, right=0.97, top=1 - 0.45 / size)
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(class_names)), class_names, rotation=90, fontsize=8)
    axis.set_yticks(range(len(class_names)), class_names, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if not _write_counts(axis, matrix, len(class_names)):
        # no numbers: the colour scale is how a count is read (with numbers it would repeat them, at ~20 ms a figure)
        figure.colorbar(image, ax=axis, shrink=0.7)
    axis.set_title(title)
    return figure


def _write_counts(axis, matrix: np.ndarray, classes: int) -> bool:
    """Each non-zero count in its cell, when numbers stay readable (up to about 30 classes)."""
    if classes > 30:
        return False
    threshold = matrix.max() / 2 if matrix.size else 0
    # Zeros are left blank (the white cell says it): the eye finds the errors at once, and each
    # number is a text to lay out and render (100 of them were half of this figure's cost).
    for (row, col), count in np.ndenumerate(matrix):
        if count:
            axis.text(col, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > threshold else "black")  # fmt: skip
    return True


class _ConfusionTemplate:
    """``confusion_matrix`` for one list of class names, built once per process and redrawn with each
    trial's counts (see ``_CurvesTemplate``): a sweep's trials share their classes."""

    def __init__(self, class_names: Sequence[str]) -> None:
        self.class_names = list(class_names)
        self.figure = confusion_matrix(np.zeros((len(class_names),) * 2, dtype=int), class_names, " ")
        self.axis = self.figure.axes[0]
        self.image = self.axis.images[0]

    def png(self, matrix: np.ndarray, title: str) -> bytes:
        self.image.set_data(matrix)
        self.image.autoscale()  # the colour scale of this matrix, as imshow sets it
        for text in list(self.axis.texts):
            text.remove()
        _write_counts(self.axis, matrix, len(self.class_names))
        self.axis.set_title(title)
        return png_bytes(self.figure)


_confusion_template: _ConfusionTemplate | None = None


def confusion_matrix_png(matrix: np.ndarray, class_names: Sequence[str], title: str = "") -> bytes:
    """The PNG of ``confusion_matrix(matrix, class_names, title)``, drawn on a figure kept for the
    next call with the same class names."""
    global _confusion_template
    if _confusion_template is None or _confusion_template.class_names != list(class_names):
        _confusion_template = _ConfusionTemplate(class_names)
    return _confusion_template.png(matrix, title)


def accuracy_by_model(table: pd.DataFrame) -> Figure:
    """Grouped bars: test accuracy of each model's chosen trial, one bar per framework."""
    pivot = table.pivot(index="model", columns="framework", values=TEST_ACCURACY)
    figure = Figure(figsize=(max(6, 0.9 * len(pivot) + 2), 4), layout="constrained")
    axis = figure.subplots()
    width = 0.8 / max(len(pivot.columns), 1)
    for i, framework in enumerate(pivot.columns):
        positions = np.arange(len(pivot)) + i * width
        bars = axis.bar(positions, pivot[framework], width, label=framework)
        axis.bar_label(bars, fmt="%.3f", fontsize=7, rotation=90, padding=2)
    axis.set_xticks(np.arange(len(pivot)) + width * (len(pivot.columns) - 1) / 2, pivot.index, rotation=30, ha="right")
    axis.set_ylabel("test accuracy (trial chosen on validation)")
    axis.set_ylim(0, 1.12)
    axis.legend()
    axis.grid(axis="y", alpha=0.3)
    return figure


def accuracy_by_learning_rate(trials: pd.DataFrame) -> Figure:
    """Best validation accuracy reached at each learning rate, one line per optimizer, one panel per
    (model, framework): where the grid's good region lies, and whether its edges were explored."""
    finished = trials[trials["status"].eq("FINISHED")].dropna(subset=[BEST_VAL_ACCURACY])
    finished = finished.assign(learning_rate=pd.to_numeric(finished["learning_rate"], errors="coerce"))
    groups = list(finished.groupby(["model", "framework"]))
    columns = min(4, max(1, len(groups)))
    rows = -(-len(groups) // columns) if groups else 1
    figure = Figure(figsize=(4 * columns, 3.2 * rows), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for axis, ((model, framework), group) in zip(axes, groups):
        best = group.groupby(["optimizer", "learning_rate"])[BEST_VAL_ACCURACY].max().reset_index()
        for optimizer, line in best.groupby("optimizer"):
            axis.plot(line["learning_rate"], line[BEST_VAL_ACCURACY], marker="o", label=optimizer)
        axis.set_xscale("log")
        axis.set_title(f"{framework} / {model}", fontsize=10)
        axis.set_xlabel("learning rate")
        axis.set_ylabel("best val accuracy")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    for axis in axes[len(groups):]:
        axis.set_visible(False)
    return figure


TRIAL_COSTS_SHOWN = 100  # bars; a bigger sweep shows its most expensive trials


def trial_costs(trials: pd.DataFrame, parts: Sequence[tuple[str, str]], total: str) -> Figure:
    """One horizontal bar per trial: its time outside the epochs, each part of its cost ledger
    (``parts``: column, label) stacked in the order a trial spends them; ``total`` is their sum."""
    rows = trials.dropna(subset=[total])
    title = f"where each trial's time outside its epochs went ({len(rows)} trials"
    if len(rows) > TRIAL_COSTS_SHOWN:
        rows = rows.nlargest(TRIAL_COSTS_SHOWN, total).sort_values("trial")
        title += f"; the {TRIAL_COSTS_SHOWN} costliest shown"
    figure = Figure(figsize=(10, 1.6 + 0.22 * len(rows)), layout="constrained")
    axis = figure.subplots()
    colours = matplotlib.colormaps["tab20"].colors
    left = np.zeros(len(rows))
    for index, (column, label) in enumerate(parts):
        seconds = rows[column].fillna(0.0).to_numpy(float)
        axis.barh(np.arange(len(rows)), seconds, left=left, height=0.75, label=label, color=colours[index % len(colours)])
        left += seconds
    axis.set_yticks(np.arange(len(rows)), rows["trial"].astype(str), fontsize=7)
    axis.invert_yaxis()  # the first trial on top, as in the table
    axis.set_xlabel("seconds (the trial's cost/… metrics; training itself is cost/train_seconds)")
    axis.set_title(title + ")", fontsize=10)
    axis.grid(axis="x", alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return figure


def accuracy_vs_cost(table: pd.DataFrame, cost_column: str, label: str, on_front: pd.Series | None = None) -> Figure:
    """Test accuracy against a cost; ``on_front`` (a boolean per row) draws the Pareto front through those rows."""
    figure = Figure(figsize=(6.5, 4.5), layout="constrained")
    axis = figure.subplots()
    for framework, rows in table.groupby("framework"):
        axis.scatter(rows[cost_column], rows[TEST_ACCURACY], label=framework, s=40)
        for _, row in rows.iterrows():
            axis.annotate(row["model"], (row[cost_column], row[TEST_ACCURACY]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    if on_front is not None and on_front.any():
        front = table[on_front.to_numpy(dtype=bool)].sort_values(cost_column)
        # a staircase: up to each front row's cost, the best accuracy reachable is the previous row's
        axis.plot(front[cost_column], front[TEST_ACCURACY], drawstyle="steps-post", color="grey", linestyle="--",
                  linewidth=1, label="Pareto front")  # fmt: skip
        axis.scatter(front[cost_column], front[TEST_ACCURACY], s=120, facecolors="none", edgecolors="grey")
    axis.set_xscale("log")
    axis.set_xlabel(label)
    axis.set_ylabel("test accuracy")
    axis.legend()
    axis.grid(alpha=0.3)
    return figure


def deltas(labels: Sequence[str], values: Sequence[float], lows: Sequence[float], highs: Sequence[float], colours: Sequence[str],
           title: str = "") -> Figure:
    """A forest plot: one row per label, its difference (a fraction, drawn in points) with the interval, zero marked."""
    figure = Figure(figsize=(7, 1.2 + 0.4 * len(labels)), layout="constrained")
    axis = figure.subplots()
    positions = np.arange(len(labels))[::-1]
    for position, value, low, high, colour in zip(positions, values, lows, highs, colours):
        if np.isfinite(low) and np.isfinite(high):
            axis.plot([100 * low, 100 * high], [position, position], color=colour, linewidth=2)
        axis.scatter([100 * value], [position], color=colour, s=36, zorder=3)
    axis.axvline(0, color="black", linewidth=0.8)
    axis.set_yticks(positions, list(labels), fontsize=8)
    axis.set_xlabel("difference in test accuracy (points)")
    axis.set_title(title, fontsize=9)
    axis.grid(axis="x", alpha=0.3)
    return figure


def leader_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], metric: str = metrics.VAL_ACCURACY.key) -> Figure:
    """One line per leader, labelled "framework/model": colour = model, line style = framework."""
    figure = Figure(figsize=(9, 4.8), layout="constrained")
    axis = figure.subplots()
    models = sorted({label.split("/", 1)[-1] for label in curves})
    frameworks = sorted({label.split("/", 1)[0] for label in curves})
    colours = {model: f"C{i % 10}" for i, model in enumerate(models)}
    styles = {framework: ("-", "--", ":", "-.")[i % 4] for i, framework in enumerate(frameworks)}
    for label, history in sorted(curves.items()):
        framework, model = label.split("/", 1) if "/" in label else ("", label)
        values = history.get(metric, [])
        axis.plot(range(1, len(values) + 1), values, styles.get(framework, "-"), color=colours[model], marker="o",
                  markersize=3, label=label)
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_xlabel("epoch")
    axis.set_ylabel(metric)
    axis.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    axis.grid(alpha=0.3)
    return figure


def class_counts(counts: pd.DataFrame) -> Figure:
    """Stacked bars of images per class and split (``counts``: index classes, columns splits)."""
    figure = Figure(figsize=(max(6, 0.35 * len(counts) + 2), 4), layout="constrained")
    axis = figure.subplots()
    bottom = np.zeros(len(counts))
    for split in counts.columns:
        axis.bar(counts.index.astype(str), counts[split], bottom=bottom, label=split)
        bottom += counts[split].to_numpy()
    axis.set_ylabel("images")
    axis.tick_params(axis="x", rotation=90)
    axis.legend()
    return figure


def sample_grid(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str], per_class: int = 6, max_classes: int = 20) -> Figure:
    """A row of example images for each class (first ``max_classes`` classes)."""
    shown = list(range(min(len(class_names), max_classes)))
    figure = Figure(figsize=(1.3 * per_class, 1.3 * len(shown)), layout="constrained")
    axes = np.atleast_2d(figure.subplots(len(shown), per_class, squeeze=False))
    for row, class_index in enumerate(shown):
        examples = np.flatnonzero(labels == class_index)[:per_class]
        for col in range(per_class):
            axis = axes[row, col]
            axis.axis("off")
            if col < len(examples):
                axis.imshow(images[examples[col]])
        axes[row, 0].set_title(class_names[class_index], fontsize=8, loc="left")
    return figure
