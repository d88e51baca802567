"""Leaderboard from MLflow alone: one row per (model, framework), chosen on validation, never on test.

- One record per trial: a resumed sweep leaves KILLED or FAILED attempts beside the FINISHED
  re-run of the same trial (same fingerprint); only the FINISHED one counts, so nothing is counted twice.
- Selection: the configuration with the best validation numbers (``metrics.RANKING``: the highest
  accuracy of its restored epoch, mean over its seeds; one seed unless ``--repeats`` ran; ties go to
  the lower validation loss). Its test metrics (means over
  seeds, with a 95% confidence interval of test accuracy from Student's t when there are several
  seeds), hyperparameters and costs are reported, with how many trials finished and failed.
"""

from __future__ import annotations

from functools import cached_property
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from imagebench.core import plots
from imagebench import store
from imagebench.core import metrics
from imagebench.report import statistics
from imagebench.store import predictions as test_predictions
from imagebench.models.registry import FRAMEWORKS

HYPERPARAMETERS = (
    "optimizer", "learning_rate", "l2", "batch_size", "epochs", "augment", "weights", "freeze_backbone",
    "head_units", "dropout", "lr_schedule", "image_size", "seed",
)  # fmt: skip


METRIC_PREFIX = "metrics."  # a metric's column in the table of runs (``trial_runs``), as MLflow's run search names it


def run_column(key: str) -> str:
    return METRIC_PREFIX + key


# the table of runs' columns the leaderboard shows, and under which names
LEADER_COLUMNS = {"model": "model", "framework": "framework",
                  **{run_column(metric.key): metric.column for metric in metrics.LEADERBOARD_METRICS}}  # fmt: skip
TEST_ACCURACY, CI95 = metrics.TEST_ACCURACY.column, metrics.TEST_ACCURACY_CI95.column
# the cost ledger in the trials table: each part's seconds (its key without "cost/"), then their sum
COST_COLUMNS = {run_column(metric.key): metric.key.split("/", 1)[1] for metric in metrics.COSTS}
FIXED_SECONDS = "fixed_seconds"  # a trial's time outside its epochs: the sum of its ledger
TRIAL_COSTS_FIGURE = "trial_costs"  # the trials view's figure: one stacked bar of the ledger per trial


class LeaderboardError(LookupError):
    pass


def _flatten(run) -> dict:
    row = {"run_id": run.info.run_id, "status": run.info.status, "start_time": run.info.start_time}
    row.update({f"params.{key}": value for key, value in run.data.params.items()})
    row.update({run_column(key): value for key, value in run.data.metrics.items()})
    row.update({f"tags.{key}": value for key, value in run.data.tags.items()})
    return row


def trial_runs(experiment: str) -> pd.DataFrame:
    """Every trial run of the experiment, one row each (params.*, metrics.*, tags.* columns)."""
    if store.client().get_experiment_by_name(experiment) is None:
        raise LeaderboardError(f"no MLflow experiment '{experiment}' in {store.tracking_uri()}; run a sweep first")
    rows = [_flatten(run) for run in store.search_trial_runs(experiment)]
    if not rows:
        raise LeaderboardError(f"experiment '{experiment}' has no trial runs yet")
    table = pd.DataFrame(rows)
    table["model"] = table[f"tags.{store.TAG_MODEL}"]
    table["framework"] = table[f"tags.{store.TAG_FRAMEWORK}"]
    table["trial"] = table.get(f"tags.{store.TAG_TRIAL}", table["run_id"])
    return table


STATUS_PREFERENCE = {"FINISHED": 0, "RUNNING": 1, "FAILED": 2, "KILLED": 3}


def _tag_column(runs: pd.DataFrame, tag: str, fallback: pd.Series) -> pd.Series:
    column = f"tags.{tag}"
    return runs[column].fillna(fallback) if column in runs else fallback


def one_run_per_trial(runs: pd.DataFrame) -> pd.DataFrame:
    """Each trial (fingerprint) once: its FINISHED run trained furthest, else its latest attempt."""
    runs = runs.assign(
        fingerprint=_tag_column(runs, store.TAG_FINGERPRINT, runs["run_id"]),
        _status_rank=runs["status"].map(STATUS_PREFERENCE).fillna(9),
        _budget=pd.to_numeric(_tag_column(runs, store.TAG_EPOCH_BUDGET, pd.Series(0, index=runs.index)), errors="coerce"),
    )
    runs["config"] = _tag_column(runs, store.TAG_CONFIG, runs["fingerprint"])
    ordered = runs.sort_values(["_status_rank", "_budget", "start_time"], ascending=[True, False, False])
    return ordered.drop_duplicates("fingerprint").drop(columns=["_status_rank", "_budget"]).sort_index()


def _confidence_half_width(values: pd.Series) -> float:
    """Half-width of the 95% confidence interval of the mean (Student's t); NaN for a single seed."""
    from scipy import stats

    values = values.dropna()
    if len(values) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def _per_configuration(finished: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: its first run's params and tags, metrics averaged over its seeds."""
    metric_columns = [c for c in finished if c.startswith(METRIC_PREFIX)]
    first = finished.sort_values("start_time").groupby("config", as_index=False).head(1).set_index("config")
    grouped = finished.groupby("config")
    first[metric_columns] = grouped[metric_columns].mean()
    first["seeds"] = grouped.size()
    test_accuracy = run_column(metrics.TEST_ACCURACY.key)
    first[CI95] = grouped[test_accuracy].apply(_confidence_half_width) if test_accuracy in finished else np.nan
    return first.reset_index()


def select_leaders(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, framework): best (mean) validation accuracy, ties to lower validation loss."""
    ranked_on = [run_column(key) for key in metrics.RANKING]
    for column in ranked_on:
        if column not in runs:
            runs = runs.assign(**{column: np.nan})
    runs = one_run_per_trial(runs)
    counts = runs.assign(finished=runs["status"].eq("FINISHED"), failed=~runs["status"].isin(["FINISHED", "RUNNING"]))
    counts = counts.groupby(["model", "framework"])[["finished", "failed"]].sum().astype(int)
    finished = runs[runs["status"].eq("FINISHED")].dropna(subset=ranked_on[:1])
    configurations = _per_configuration(finished) if len(finished) else finished.assign(seeds=[], **{CI95: []})
    ordered = configurations.sort_values([*ranked_on, "start_time"], ascending=[*metrics.RANKING_ASCENDING, True])
    leaders = ordered.groupby(["model", "framework"], as_index=False).head(1)
    leaders = leaders.merge(counts.reset_index(), on=["model", "framework"], how="right")
    return leaders.sort_values(ranked_on, ascending=list(metrics.RANKING_ASCENDING)).reset_index(drop=True)


def leader_table(leaders: pd.DataFrame) -> pd.DataFrame:
    """The readable leaderboard: test metrics, the chosen trial's hyperparameters, costs, counts."""
    columns = {key: name for key, name in LEADER_COLUMNS.items() if key in leaders}
    table = leaders[list(columns)].rename(columns=columns)
    if TEST_ACCURACY in table:
        table.insert(table.columns.get_loc(TEST_ACCURACY) + 1, CI95, leaders[CI95])
        table.insert(table.columns.get_loc(CI95) + 1, "seeds", leaders["seeds"].astype("Int64"))
    for name in HYPERPARAMETERS:
        if f"params.{name}" in leaders:
            table[name] = leaders[f"params.{name}"]
    for name in (metric.column for metric in metrics.LEADERBOARD_METRICS if metric.count):
        if name in table:
            # counts, not floats (MLflow stores every metric as float); a mean over seeds (best_epoch) is rounded
            table[name] = table[name].round().astype("Int64")
    table["finished"] = leaders["finished"]
    table["failed"] = leaders["failed"]
    table["run_id"] = leaders["run_id"]
    table.insert(0, "rank", range(1, len(table) + 1))
    return table


def trial_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Every trial once (see ``one_run_per_trial``), with its metrics, hyperparameters and error."""
    runs = one_run_per_trial(runs)
    columns = ["trial", "model", "framework", "status"] + [c for c in LEADER_COLUMNS if c.startswith(METRIC_PREFIX) and c in runs]
    columns += [f"params.{name}" for name in HYPERPARAMETERS if f"params.{name}" in runs]
    costs = [column for column in COST_COLUMNS if column in runs]
    error_column = f"tags.{store.TAG_ERROR}"
    table = runs[columns + costs + ([error_column] if error_column in runs else [])].copy()
    table = table.rename(columns={**COST_COLUMNS, error_column: "error"})
    table.columns = [c.split(".", 1)[1] if c.startswith((METRIC_PREFIX, "params.")) else c for c in table.columns]
    if costs:  # (runs recorded before the ledger have none)
        table.insert(table.columns.get_loc(COST_COLUMNS[costs[-1]]) + 1, FIXED_SECONDS,
                     table[[COST_COLUMNS[column] for column in costs]].sum(axis=1, min_count=1))  # fmt: skip
    return table.sort_values("trial").reset_index(drop=True)


def _recorded(trials: pd.DataFrame, column: str) -> bool:
    return column in trials and trials[column].notna().any()


def cost_parts(trials: pd.DataFrame) -> list[tuple[str, str]]:
    """(trials-table column, header) of each ledger part the trials recorded, in the ledger's order."""
    parts = [(COST_COLUMNS[run_column(metric.key)], metric.header) for metric in metrics.COSTS]
    return [(column, header) for column, header in parts if _recorded(trials, column)]


def cost_sums(trials: pd.DataFrame) -> dict[str, float]:
    """What the sweep spent on each part of the ledger and on training, over all its trials (the
    parent run's ``cost/…`` metrics: the same keys as a trial's, summed)."""
    columns = {metric.key: COST_COLUMNS[run_column(metric.key)] for metric in metrics.COSTS}
    columns[metrics.TRAIN_SECONDS.key] = metrics.TRAIN_SECONDS.key  # (the trials table keeps the MLflow key)
    return {key: float(trials[column].sum()) for key, column in columns.items() if _recorded(trials, column)}


def metric_history(run_id: str, keys=metrics.EPOCH_METRICS) -> dict[str, list[float]]:
    mlflow_client = store.client()
    return {key: [m.value for m in sorted(mlflow_client.get_metric_history(run_id, key), key=lambda m: m.step)] for key in keys}


def confusion_of(run_id: str) -> tuple[np.ndarray, list[str]]:
    import json

    path = store.client().download_artifacts(run_id, store.ARTIFACT_CONFUSION_JSON)
    content = json.loads(Path(path).read_text(encoding="utf-8"))
    return np.array(content["matrix"]), content["labels"]


# What the parity table sets side by side per model, and when it flags a pair
PARITY_COLUMNS = tuple(metric.column for metric in (metrics.PARAMS, metrics.FLOPS, metrics.TEST_ACCURACY, metrics.TEST_ACCURACY_CI95,
                                                      metrics.LATENCY_MS, metrics.TRAIN_SECONDS))  # fmt: skip
PARITY_PARAMS_TOLERANCE = 0.02  # params differing by more than 2% mean the two builds are not the same model


def parity_column(framework: str, column: str) -> str:
    return f"{framework}_{column}"


def _parity_flags(row: pd.Series) -> str:
    flags = []
    counts = [row.get(parity_column(framework, metrics.PARAMS.column)) for framework in FRAMEWORKS]
    if all(pd.notna(count) for count in counts) and max(counts) - min(counts) > PARITY_PARAMS_TOLERANCE * max(counts):
        flags.append(f"params differ by {(max(counts) - min(counts)) / max(counts):.1%}")
    intervals = [(row.get(parity_column(framework, TEST_ACCURACY)), row.get(parity_column(framework, CI95))) for framework in FRAMEWORKS]
    if all(pd.notna(mean) and pd.notna(half) for mean, half in intervals):
        if max(mean - half for mean, half in intervals) > min(mean + half for mean, half in intervals):
            flags.append("test accuracy CIs do not overlap")
    return "; ".join(flags)


def parity_table(leaders: pd.DataFrame) -> pd.DataFrame:
    """Per model, Keras next to PyTorch (each framework's leader): params, FLOPs, test accuracy
    (mean ± 95% CI over seeds where repeated), latency, train seconds, and a flag where params
    differ by more than 2% or the accuracy intervals do not overlap."""
    columns = [name for name in PARITY_COLUMNS if name in leaders]
    if leaders.empty or not {"model", "framework"} <= set(leaders):
        return pd.DataFrame()
    wide = leaders.pivot_table(index="model", columns="framework", values=columns, aggfunc="first", dropna=False)
    wide.columns = [parity_column(framework, name) for name, framework in wide.columns]
    ordered = [parity_column(framework, name) for name in columns for framework in FRAMEWORKS if parity_column(framework, name) in wide]
    table = wide[ordered].reset_index()
    table["flag"] = table.apply(_parity_flags, axis=1)
    return table


def parity_equivalence(parity: pd.DataFrame, seeds: dict[tuple[str, str], list], margin: float) -> pd.DataFrame:
    """The parity table with ``equivalence`` (TOST within ±margin on the paired per-image
    correctness, ``statistics.equivalence``) and its ``tost_p``, per model with both frameworks."""
    if parity.empty or not all(parity_column(framework, TEST_ACCURACY) in parity for framework in FRAMEWORKS):
        return parity
    def tested(row: pd.Series) -> tuple[str, float]:
        if any(pd.isna(row[parity_column(framework, TEST_ACCURACY)]) for framework in FRAMEWORKS):
            return "", np.nan  # one framework has no finished trial of this model: nothing to compare
        return statistics.equivalence(*(seeds.get((row["model"], framework), []) for framework in FRAMEWORKS), margin)

    results = [tested(row) for _, row in parity.iterrows()]
    return parity.assign(equivalence=[statement for statement, _ in results], tost_p=[p for _, p in results])


# the cost axes of the Pareto front (the ``pareto`` column names them), each against test accuracy
PARETO_AXES = {"latency": metrics.LATENCY_MS.column, "flops": metrics.FLOPS.column, "params": metrics.PARAMS.column}
STATISTICS_COLUMNS = ("tier", "p_vs_leader", "p_leader_better", "p_leader_better_low", "p_leader_better_high")


def with_statistics(table: pd.DataFrame, seeds: list[list]) -> tuple[pd.DataFrame, str]:
    """The leader table with its tiers, p against the leader (Holm), P(leader better) where rows
    have several seeds, and the Pareto columns; and the one-line reading of the tiers."""
    labels = statistics.row_labels(table["model"], table["framework"])
    verdicts = statistics.assign_tiers(seeds)
    compared = [verdict.comparison for verdict in verdicts]
    values = {"tier": pd.array([verdict.tier for verdict in verdicts], dtype="Int64"),
              "p_vs_leader": [verdict.p_vs_leader for verdict in verdicts]}  # fmt: skip
    if seeds and len(seeds[0]) > 1:  # over seeds: P(leader better) and its bootstrap interval
        for column, attribute in zip(STATISTICS_COLUMNS[2:], ("probability", "low", "high")):
            values[column] = [getattr(comparison, attribute) if comparison else np.nan for comparison in compared]
    position = table.columns.get_loc("seeds") + 1 if "seeds" in table else len(table.columns)
    for offset, (column, column_values) in enumerate(values.items()):
        table.insert(position + offset, column, column_values)
    if TEST_ACCURACY in table:
        pareto = statistics.pareto_columns(table, TEST_ACCURACY, PARETO_AXES, labels)
        table.insert(table.columns.get_loc("run_id"), "pareto", pareto["pareto"])
        table.insert(table.columns.get_loc("run_id"), "dominated_by", pareto["dominated_by"])
    return table, statistics.reading(labels, seeds, verdicts)


def seeds_predictions(runs: pd.DataFrame, selected: pd.DataFrame) -> list[list]:
    """Per leaderboard row, its configuration's seeds' test predictions (oldest first); [] when a
    seed has none recorded (runs before they were logged) or the row has no finished trial."""
    finished = one_run_per_trial(runs)
    finished = finished[finished["status"].eq("FINISHED")].sort_values("start_time")
    rows = []
    for config in selected.get("config", pd.Series(index=selected.index, dtype=object)):
        loaded = [test_predictions.load(run_id) for run_id in finished.loc[finished["config"].eq(config), "run_id"]] if pd.notna(config) else []
        rows.append(loaded if all(seed is not None for seed in loaded) else [])
    return rows


@dataclass
class Leaderboard:
    experiment: str
    leaders: pd.DataFrame  # readable table (leader_table)
    trials: pd.DataFrame  # every trial
    figures: dict = field(default_factory=dict)  # name -> matplotlib Figure
    reading: str = ""  # the tiers in one line (``statistics.reading``)
    seeds: dict = field(default_factory=dict)  # (model, framework) -> its seeds' TestPredictions
    parity_margin: float = statistics.PARITY_MARGIN

    @cached_property
    def parity(self) -> pd.DataFrame:
        """Computed once (md, html and csv all show it)."""
        return parity_equivalence(parity_table(self.leaders), self.seeds, self.parity_margin)

    @property
    def winner(self) -> Optional[pd.Series]:
        selected_on = metrics.BEST_VAL_ACCURACY.column
        ranked = self.leaders.dropna(subset=[selected_on]) if selected_on in self.leaders else self.leaders.iloc[0:0]
        return ranked.iloc[0] if len(ranked) else None


def _figures(table: pd.DataFrame, trials: pd.DataFrame) -> dict:
    chosen = table.dropna(subset=[TEST_ACCURACY]) if TEST_ACCURACY in table else table.iloc[0:0]
    if chosen.empty:
        return {}
    def on_front(axis: str) -> pd.Series:
        return chosen["pareto"].fillna("").str.split(", ").apply(lambda axes: axis in axes) if "pareto" in chosen else None

    figures = {
        "test_accuracy_by_model": plots.accuracy_by_model(chosen),
        "accuracy_vs_params": plots.accuracy_vs_cost(chosen, metrics.PARAMS.column, "parameters (log)", on_front("params")),
        "accuracy_vs_latency": plots.accuracy_vs_cost(chosen, metrics.LATENCY_MS.column, "latency ms / image (log)", on_front("latency")),
    }
    flops = metrics.FLOPS.column
    if flops in chosen and chosen[flops].notna().any():  # runs recorded before cost/flops have none
        figures["accuracy_vs_flops"] = plots.accuracy_vs_cost(chosen, flops, "forward FLOPs / image (log; multiply-add = 2)", on_front("flops"))
    curves = {f"{row.framework}/{row.model}": metric_history(row.run_id) for row in chosen.itertuples()}
    figures["leader_learning_curves"] = plots.leader_curves(curves, metrics.VAL_ACCURACY.key)
    if {"learning_rate", "optimizer", metrics.BEST_VAL_ACCURACY.key} <= set(trials) and trials["learning_rate"].nunique() > 1:
        figures["accuracy_by_learning_rate"] = plots.accuracy_by_learning_rate(trials)
    winner = chosen.iloc[0]
    matrix, labels = confusion_of(winner["run_id"])
    figures["winner_confusion_matrix"] = plots.confusion_matrix(
        matrix, labels, f"winner on validation: {winner['framework']}/{winner['model']} (test set)"
    )
    parts = cost_parts(trials)
    if parts:
        figures[TRIAL_COSTS_FIGURE] = plots.trial_costs(trials, parts, FIXED_SECONDS)
    return figures


def build(experiment: str, with_figures: bool = True, parity_margin: float = statistics.PARITY_MARGIN) -> Leaderboard:
    """``parity_margin``: δ of the parity table's equivalence test (a fraction: 0.05 = 5 points)."""
    runs = trial_runs(experiment)
    selected = select_leaders(runs)
    seeds = seeds_predictions(runs, selected)
    leaders, reading = with_statistics(leader_table(selected), seeds)
    by_row = {(model, framework): row_seeds for model, framework, row_seeds in zip(leaders["model"], leaders["framework"], seeds)}
    trials = trial_table(runs)
    return Leaderboard(experiment, leaders, trials, _figures(leaders, trials) if with_figures else {}, reading, by_row, parity_margin)


def _rounded(table: pd.DataFrame) -> pd.DataFrame:
    return table.round(4)


def _html(board: Leaderboard, images: dict[str, bytes]) -> str:
    from imagebench.report.html_report import render

    board_images = {name: data for name, data in images.items() if name != TRIAL_COSTS_FIGURE}
    trial_images = {name: data for name, data in images.items() if name == TRIAL_COSTS_FIGURE}
    return render(board.experiment, board.leaders, board.trials, board_images, board.parity, board.reading, trial_images)


def markdown_table(leaders: pd.DataFrame) -> str:
    """The leader table as Markdown; blank where a value does not apply (one seed: no interval)."""
    table = _rounded(leaders.drop(columns=["run_id"]))
    return table.astype(object).where(table.notna(), None).to_markdown(index=False, missingval="")


def _markdown(board: Leaderboard, image_names: list[str]) -> str:
    lines = [
        f"# Leaderboard: {board.experiment}",
        "",
        "One row per (model, framework): the configuration with the best validation accuracy (ties: lower",
        "validation loss; the mean over seeds where `--repeats` ran). Test metrics are those of that",
        "configuration (means over its `seeds`, `test_accuracy_ci95` = half-width of the 95% confidence",
        "interval, Student's t); the test set never chooses. `tier`: rows not shown worse than the leader on the",
        "same test images share its tier (`p_vs_leader`: Holm-adjusted); `pareto`: the cost axes on whose",
        "accuracy-cost front the row is (`dominated_by`: who beats it otherwise).",
        "",
        f"**Reading:** {board.reading}" if board.reading else "",
        "",
        markdown_table(board.leaders),
        "",
        *[f"![{name}]({name}.png)" for name in image_names if name != TRIAL_COSTS_FIGURE],
        "",
        f"All {len(board.trials)} trials: `trials.csv`"
        + (f"; where each spent its time outside the epochs (`{FIXED_SECONDS}`, the `cost/…` metrics):" if TRIAL_COSTS_FIGURE in image_names else "."),
        *(["", f"![{TRIAL_COSTS_FIGURE}]({TRIAL_COSTS_FIGURE}.png)"] if TRIAL_COSTS_FIGURE in image_names else []),
    ]
    parity = board.parity
    if {parity_column(framework, TEST_ACCURACY) for framework in FRAMEWORKS} <= set(parity):
        table = parity.round(4)
        lines += ["", "## Framework parity: Keras next to PyTorch", "",
                  f"`equivalence`: two one-sided tests (TOST) on the paired per-image correctness, margin ±{100 * board.parity_margin:g} points.", "",
                  table.astype(object).where(table.notna(), None).to_markdown(index=False, missingval="")]  # fmt: skip
    return "\n".join(lines) + "\n"


def write(board: Leaderboard, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {name: plots.png_bytes(figure, dpi=110) for name, figure in board.figures.items()}
    written = []
    for name, data in images.items():
        (out_dir / f"{name}.png").write_bytes(data)
        written.append(out_dir / f"{name}.png")
    outputs = {
        "leaderboard.md": _markdown(board, list(images)),
        "leaderboard.html": _html(board, images),
    }
    for name, text in outputs.items():
        (out_dir / name).write_text(text, encoding="utf-8")
        written.append(out_dir / name)
    board.leaders.to_csv(out_dir / "leaderboard.csv", index=False)
    board.trials.to_csv(out_dir / "trials.csv", index=False)
    board.parity.to_csv(out_dir / "parity.csv", index=False)
    return written + [out_dir / "leaderboard.csv", out_dir / "trials.csv", out_dir / "parity.csv"]
