"""``imagebench compare A B``: did anything change between two sweeps?

A and B are experiments (sweep names) or sweeps' parent run ids. Each sweep's finished
configurations (a configuration: a trial's parameters without its seed; ``--repeats`` gives it
several seeds) are matched across the two: same model, same framework, same values of every
parameter except those that are constant within each sweep and differ between them, which are
what the comparison is about ("augment none -> light", "dataset v1 -> v2"). For each matched pair,
B's test accuracy minus A's with its 95% interval and a p-value (``statistics.delta``: McNemar on
the same test images, a permutation test over seeds, or two independent proportions when the test
images differ), Holm-adjusted over the pairs; only pairs beyond noise (adjusted p < 0.05) are
flagged better or worse. Then what differs in the record: parameters, the grid's values, package
versions, git commits, dataset fingerprints.

Written to ``results/comparisons/<A>-vs-<B>/`` (md, html, csv, a plot of the deltas) and recorded
as a run (role ``comparison``) of the experiment ``imagebench-comparisons``, the report as its
description and artifacts. Bad input (an unknown sweep, a sweep compared with itself, two tasks
with different classes, nothing in common, no test predictions recorded) is a ``CompareError``.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from imagebench import store
from imagebench.core import metrics, names, plots
from imagebench.core.params import FIELD_NAMES, ParamsError
from imagebench.report import leaderboard, statistics
from imagebench.store import predictions as test_predictions

EXPERIMENT = "imagebench-comparisons"  # where every comparison run is recorded
ROLE = "comparison"
COMPARISONS_DIR = "comparisons"  # results/comparisons/<A>-vs-<B>/
ARTIFACT_DIR = "comparison"
ALWAYS_MATCHED = ("model", "framework")  # never "what the comparison is about", even when constant per sweep
NOT_MATCHED = ("seed", "experiment")  # seeds are repeats of one configuration; the experiment is the sweep itself
BETTER, WORSE, WITHIN_NOISE = "better", "worse", "within noise"
COLOURS = {BETTER: "tab:green", WORSE: "tab:red"}  # in the plot; within noise and not tested: grey
# raw differences shown beside the tested accuracy (no test: durations and sizes are measured, not sampled)
OTHER_METRICS = (metrics.TEST_LOSS, metrics.LATENCY_MS, metrics.TRAIN_SECONDS, metrics.PARAMS)
NOT_RECORDED = "(not recorded)"


class CompareError(ParamsError):
    """Two sweeps that cannot be compared as asked (exit 2, nothing written)."""


@dataclass
class Configuration:
    model: str
    framework: str
    params: dict[str, str]  # every parameter but the seed, as recorded (text)
    run_ids: list[str]  # its seeds' runs, oldest first
    metrics: dict[str, float]  # means over the seeds


@dataclass
class Sweep:
    reference: str  # as typed
    experiment: str
    parent_run_id: Optional[str]
    configurations: list[Configuration]
    tags: list[dict[str, str]]  # every finished trial's tags: versions, commits, dataset fingerprints

    @property
    def label(self) -> str:
        return self.experiment


@dataclass
class Comparison:
    a: Sweep
    b: Sweep
    table: pd.DataFrame  # one row per matched configuration
    differences: pd.DataFrame  # what differs in the record: kind, name, a, b
    only_in_a: list[str] = field(default_factory=list)
    only_in_b: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.a.label}-vs-{self.b.label}"

    def counts(self) -> dict[str, int]:
        verdicts = self.table["verdict"]
        return {"matched": len(self.table), "beyond_noise": int(verdicts.isin([BETTER, WORSE]).sum()),
                "better": int(verdicts.eq(BETTER).sum()), "worse": int(verdicts.eq(WORSE).sum())}  # fmt: skip

    @property
    def reading(self) -> str:
        counts = self.counts()
        flagged = self.table[self.table["verdict"].isin([BETTER, WORSE])]
        parts = [f"{row.configuration}: {row.verdict} in {self.b.label} ({_points(row.delta)} points "
                 f"[{_points(row.delta_low)}, {_points(row.delta_high)}], {_p(row.p_holm)})" for row in flagged.itertuples()]  # fmt: skip
        sentence = (f"Of {counts['matched']} matched configuration{'s' if counts['matched'] != 1 else ''}, "
                    f"{counts['beyond_noise']} changed beyond noise" + (": " + "; ".join(parts) if parts else "")
                    + f" (test accuracy, {self.b.label} minus {self.a.label}, Holm-adjusted over the configurations).")  # fmt: skip
        untested = self.table[self.table["verdict"].str.startswith("not tested")]
        if len(untested):
            sentence += f" Not tested: {', '.join(untested['configuration'])} ({untested['verdict'].iloc[0]})."
        paired = self.table[self.table["method"].eq(statistics.PAIRED)]
        if len(paired) and paired["test_images"].min() < statistics.SMALL_TEST_SET:
            images = int(paired["test_images"].min())
            needed = statistics.smallest_detectable_difference(images)
            sentence += (f" With {images} test images, a configuration must change its answer on at least {needed} images "
                         f"(all one way) for the change to be detectable (exact McNemar, p < {statistics.ALPHA}; more after Holm)."
                         if needed else f" With {images} test images no change can be detected: use a larger test set.")  # fmt: skip
        changed = self.differences[self.differences["kind"].eq("compared")]
        if len(changed):
            sentence = "Compared: " + "; ".join(f"{row.name} {row.a} -> {row.b}" for row in changed.itertuples()) + ". " + sentence
        return sentence


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _p(value: float) -> str:
    return f"p = {value:.3g}" if value >= 0.001 else "p < 0.001"


# ---- Reading the two sweeps ---------------------------------------------------------------------


def _experiment_names(limit: int = 10) -> list[str]:
    return [experiment.name for experiment in store.client().search_experiments(max_results=limit) if experiment.name != EXPERIMENT]


def resolve(reference: str) -> tuple[str, Optional[str]]:
    """(experiment, parent run id or None) that ``reference`` names: an experiment's name, else a sweep's parent run id."""
    from mlflow.exceptions import MlflowException

    client = store.client()
    found = client.get_experiment_by_name(reference)
    if found is not None and found.lifecycle_stage == "active":
        return reference, None
    if len(reference) == store.RUN_ID_LENGTH:
        try:
            run = client.get_run(reference)
        except MlflowException:
            run = None
        if run is not None:
            role = run.data.tags.get(store.TAG_ROLE)
            if role != "sweep":
                raise CompareError(f"run {reference} is not a sweep's parent run (role {role!r}): give an experiment name or a parent run id")
            return client.get_experiment(run.info.experiment_id).name, reference
    known = ", ".join(_experiment_names()) or "none yet"
    raise CompareError(f"'{reference}' is no experiment in {store.tracking_uri()} and no sweep's parent run id "
                       f"(experiments: {known}): give an experiment (sweep) name or the id of a sweep's parent run")  # fmt: skip


def _finished_runs(experiment: str, parent_run_id: Optional[str]) -> pd.DataFrame:
    runs = leaderboard.one_run_per_trial(leaderboard.trial_runs(experiment))
    if parent_run_id:
        runs = runs[runs.get(f"tags.{store.TAG_PARENT}", pd.Series(index=runs.index, dtype=object)).eq(parent_run_id)]
    return runs[runs["status"].eq("FINISHED")].sort_values("start_time")


def _text(value) -> str:
    return NOT_RECORDED if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def _configuration(group: pd.DataFrame) -> Configuration:
    first = group.iloc[0]
    params = {name: _text(first.get(f"params.{name}")) for name in FIELD_NAMES if name not in NOT_MATCHED}
    means = {metric.key: float(group[column].mean()) for metric in metrics.METRICS
             if (column := leaderboard.run_column(metric.key)) in group and not metric.per_epoch}  # fmt: skip
    return Configuration(str(first["model"]), str(first["framework"]), params, list(group["run_id"]), means)


def load_sweep(reference: str) -> Sweep:
    experiment, parent_run_id = resolve(reference)
    try:
        runs = _finished_runs(experiment, parent_run_id)
    except leaderboard.LeaderboardError as error:
        raise CompareError(f"{reference}: {error}") from None
    if runs.empty:
        raise CompareError(f"sweep '{experiment}' has no finished trial: nothing to compare (run it, or resume it, first)")
    configurations = [_configuration(group) for _, group in runs.groupby("config", sort=False)]
    tags = [{key.split(".", 1)[1]: value for key, value in row.items() if key.startswith("tags.") and isinstance(value, str)}
            for row in runs.to_dict("records")]  # fmt: skip
    return Sweep(reference, experiment, parent_run_id, configurations, tags)


# ---- Matching ----------------------------------------------------------------------------------


def _values(sweep: Sweep, name: str) -> set[str]:
    return {configuration.params.get(name, NOT_RECORDED) for configuration in sweep.configurations}


def compared_parameters(a: Sweep, b: Sweep) -> list[str]:
    """What the comparison is about: the parameters with one value in each sweep, not the same one."""
    return [name for name in FIELD_NAMES if name not in (*NOT_MATCHED, *ALWAYS_MATCHED)
            and len(_values(a, name)) == 1 and len(_values(b, name)) == 1 and _values(a, name) != _values(b, name)]  # fmt: skip


def _key(configuration: Configuration, matched_on: list[str]) -> tuple:
    return (configuration.model, configuration.framework, *(configuration.params.get(name, NOT_RECORDED) for name in matched_on))


def _label(configuration: Configuration, axes: list[str]) -> str:
    settings = " ".join(f"{name}={configuration.params.get(name, NOT_RECORDED)}" for name in axes)
    return f"{configuration.framework}/{configuration.model}" + (f" {settings}" if settings else "")


def match(a: Sweep, b: Sweep) -> tuple[list[tuple[Configuration, Configuration]], list[Configuration], list[Configuration], list[str]]:
    """(matched pairs, only in A, only in B, the grid's axes that name a configuration)."""
    compared = compared_parameters(a, b)
    matched_on = [name for name in FIELD_NAMES if name not in (*NOT_MATCHED, *ALWAYS_MATCHED, *compared)]
    axes = [name for name in matched_on if len(_values(a, name) | _values(b, name)) > 1]
    in_b = {_key(configuration, matched_on): configuration for configuration in b.configurations}  # latest wins
    pairs = [(configuration, in_b[_key(configuration, matched_on)]) for configuration in a.configurations
             if _key(configuration, matched_on) in in_b]  # fmt: skip
    matched_b = {id(pair[1]) for pair in pairs}
    only_a = [configuration for configuration in a.configurations if _key(configuration, matched_on) not in in_b]
    only_b = [configuration for configuration in b.configurations if id(configuration) not in matched_b]
    return pairs, only_a, only_b, axes


# ---- The record's differences ------------------------------------------------------------------


def _listed(values: set[str]) -> str:
    return ", ".join(sorted(values)) if values else NOT_RECORDED


def _tag_values(sweep: Sweep, tag: str) -> set[str]:
    return {tags[tag] for tags in sweep.tags if tags.get(tag)}


def _versions(sweep: Sweep) -> dict[str, set[str]]:
    versions: dict[str, set[str]] = {}
    for text in _tag_values(sweep, store.TAG_VERSIONS):
        for package, version in json.loads(text).items():
            versions.setdefault(package, set()).add(str(version))
    return versions


def record_differences(a: Sweep, b: Sweep, compared: list[str]) -> pd.DataFrame:
    """kind (compared | grid | package | git commit | dataset), name, A's values, B's values."""
    rows = [("compared", name, _listed(_values(a, name)), _listed(_values(b, name))) for name in compared]
    rows += [("grid", name, _listed(_values(a, name)), _listed(_values(b, name))) for name in FIELD_NAMES
             if name not in (*NOT_MATCHED, *compared) and _values(a, name) != _values(b, name)]  # fmt: skip
    versions_a, versions_b = _versions(a), _versions(b)
    rows += [("package", package, _listed(versions_a.get(package, set())), _listed(versions_b.get(package, set())))
             for package in sorted(set(versions_a) | set(versions_b)) if versions_a.get(package) != versions_b.get(package)]  # fmt: skip
    for kind, tag in (("git commit", store.TAG_GIT_COMMIT), ("dataset", store.TAG_DATASET_FINGERPRINT)):
        values_a, values_b = _tag_values(a, tag), _tag_values(b, tag)
        if values_a != values_b:
            rows.append((kind, tag, _listed(values_a), _listed(values_b)))
    return pd.DataFrame(rows, columns=["kind", "name", "a", "b"])


# ---- The deltas --------------------------------------------------------------------------------


def _seeds(configuration: Configuration) -> list:
    loaded = [test_predictions.load(run_id) for run_id in configuration.run_ids]
    return loaded if all(seed is not None for seed in loaded) else []


def _check_same_classes(a: Sweep, b: Sweep, seeds: list[tuple[list, list]]) -> None:
    classes = [next((side[0].class_names for side in sides if side), None) for sides in zip(*seeds)] if seeds else [None, None]
    if None not in classes and classes[0] != classes[1]:
        raise CompareError(f"the two sweeps classify different classes: {a.label} has {len(classes[0])} ({', '.join(classes[0][:8])}"
                           f"{', ...' if len(classes[0]) > 8 else ''}), {b.label} has {len(classes[1])} ({', '.join(classes[1][:8])}"
                           f"{', ...' if len(classes[1]) > 8 else ''}): different datasets, nothing to compare image for image")  # fmt: skip


def _row(a: Configuration, b: Configuration, label: str, seeds: tuple[list, list]) -> dict:
    accuracy = metrics.TEST_ACCURACY.key
    row = {"configuration": label, "model": a.model, "framework": a.framework, "a_seeds": len(a.run_ids), "b_seeds": len(b.run_ids),
           "a_test_accuracy": a.metrics.get(accuracy, np.nan), "b_test_accuracy": b.metrics.get(accuracy, np.nan)}  # fmt: skip
    if all(seeds):
        result = statistics.delta(*seeds)
        row.update(delta=result.difference, delta_low=result.low, delta_high=result.high, p=result.p, method=result.method,
                   test_images=len(seeds[1][0].labels))  # fmt: skip
    else:
        side = "A" if not seeds[0] else "B"
        row.update(delta=row["b_test_accuracy"] - row["a_test_accuracy"], delta_low=np.nan, delta_high=np.nan, p=np.nan,
                   method="", verdict=f"not tested: {side} has {statistics.NO_PREDICTIONS}")  # fmt: skip
    for metric in OTHER_METRICS:
        row[f"delta_{metric.column}"] = b.metrics.get(metric.key, np.nan) - a.metrics.get(metric.key, np.nan)
    row["a_run_ids"], row["b_run_ids"] = " ".join(a.run_ids), " ".join(b.run_ids)
    return row


def _with_verdicts(table: pd.DataFrame) -> pd.DataFrame:
    tested = table["p"].notna()
    table["p_holm"] = np.nan
    table.loc[tested, "p_holm"] = statistics.holm(table.loc[tested, "p"].tolist())
    beyond = tested & (table["p_holm"] < statistics.ALPHA)
    verdicts = np.where(beyond, np.where(table["delta"] > 0, BETTER, WORSE), WITHIN_NOISE)
    table["verdict"] = table.get("verdict", pd.Series(index=table.index, dtype=object)).where(~tested, verdicts)
    table["verdict"] = table["verdict"].fillna(WITHIN_NOISE)
    return table


TABLE_COLUMNS = ("configuration", "model", "framework", "a_seeds", "b_seeds", "a_test_accuracy", "b_test_accuracy", "delta", "delta_low",
                 "delta_high", "p", "p_holm", "verdict", "method")  # fmt: skip


def compare(reference_a: str, reference_b: str) -> Comparison:
    """Match, test and list the differences (nothing written; see ``record``)."""
    a, b = load_sweep(reference_a), load_sweep(reference_b)
    if a.experiment == b.experiment and a.parent_run_id == b.parent_run_id:
        raise CompareError(f"'{reference_a}' and '{reference_b}' are the same sweep ({a.experiment}): give two different sweeps")
    pairs, only_a, only_b, axes = match(a, b)
    compared = compared_parameters(a, b)
    if not pairs:
        raise CompareError(f"no configuration of {a.label} matches one of {b.label} (same model, framework and parameters but "
                           f"{', '.join(compared) or 'none'}): {a.label} has {', '.join(sorted({_label(c, []) for c in a.configurations}))}; "
                           f"{b.label} has {', '.join(sorted({_label(c, []) for c in b.configurations}))}")  # fmt: skip
    seeds = [(_seeds(first), _seeds(second)) for first, second in pairs]
    _check_same_classes(a, b, seeds)
    for side, sweep in ((0, a), (1, b)):
        if not any(pair[side] for pair in seeds):
            raise CompareError(f"sweep '{sweep.experiment}' has {statistics.NO_PREDICTIONS}")
    rows = [_row(first, second, _label(first, axes), pair_seeds) for (first, second), pair_seeds in zip(pairs, seeds)]
    table = _with_verdicts(pd.DataFrame(rows))
    ordered = [*TABLE_COLUMNS, *(column for column in table if column not in TABLE_COLUMNS)]
    return Comparison(a, b, table[ordered], record_differences(a, b, compared),
                      [_label(c, axes) for c in only_a], [_label(c, axes) for c in only_b])  # fmt: skip


# ---- The report --------------------------------------------------------------------------------


def figure(comparison: Comparison):
    table = comparison.table
    labels = [f"{label} ({verdict})" for label, verdict in zip(table["configuration"], table["verdict"])]
    colours = [COLOURS.get(verdict, "grey") for verdict in table["verdict"]]
    return plots.deltas(labels, table["delta"], table["delta_low"], table["delta_high"], colours,
                        f"test accuracy: {comparison.b.label} minus {comparison.a.label} (95% interval)")


def _markdown_table(table: pd.DataFrame) -> str:
    shown = table.round(4)
    return shown.astype(object).where(shown.notna(), None).to_markdown(index=False, missingval="")


def _sides(comparison: Comparison) -> list[str]:
    return [f"- **{side}**: experiment `{sweep.experiment}`" + (f", parent run `{sweep.parent_run_id}`" if sweep.parent_run_id else "")
            + f" ({len(sweep.configurations)} finished configurations)" for side, sweep in (("A", comparison.a), ("B", comparison.b))]  # fmt: skip


def markdown(comparison: Comparison, image: Optional[str] = None) -> str:
    lines = [f"# Comparison: {comparison.a.label} vs {comparison.b.label}", "", *_sides(comparison), "",
             f"**Reading:** {comparison.reading}", "",
             "Configurations are matched on model, framework and every parameter but the seed and those under `compared` below. "
             "`delta` = B's test accuracy minus A's, `delta_low`/`delta_high` its 95% interval, `p_holm` the p-value Holm-adjusted "
             f"over the configurations; `better`/`worse` only where `p_holm` < {statistics.ALPHA}.", "",
             _markdown_table(comparison.table[list(TABLE_COLUMNS)]), ""]  # fmt: skip
    if image:
        lines += [f"![deltas]({image})", ""]
    lines += ["## What differs in the record", ""]
    lines += [_markdown_table(comparison.differences) if len(comparison.differences) else "Nothing: same parameters, packages, commit and data.", ""]
    for side, labels in (("A", comparison.only_in_a), ("B", comparison.only_in_b)):
        if labels:
            lines += [f"Only in {side} (not compared): {', '.join(labels)}.", ""]
    return "\n".join(lines)


def _html(comparison: Comparison, png: bytes) -> str:
    title = html.escape(f"{comparison.a.label} vs {comparison.b.label}")
    sides = "".join(f"<li>{html.escape(line[2:]).replace('**', '')}</li>" for line in _sides(comparison))
    table = comparison.table[list(TABLE_COLUMNS)].round(4).to_html(index=False, na_rep="", classes="deltas")
    differences = comparison.differences.to_html(index=False) if len(comparison.differences) else "<p>Nothing.</p>"
    only = "".join(f"<p>Only in {side} (not compared): {html.escape(', '.join(labels))}.</p>"
                   for side, labels in (("A", comparison.only_in_a), ("B", comparison.only_in_b)) if labels)  # fmt: skip
    image = base64.b64encode(png).decode()
    return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Comparison: {title}</title>"
            "<style>body{font-family:sans-serif;font-size:14px} table{border-collapse:collapse} td,th{border:1px solid #ccc;"
            "padding:3px 6px}</style></head>"
            f"<body><h1>Comparison: {title}</h1><ul>{sides}</ul><p><b>Reading:</b> {html.escape(comparison.reading)}</p>{table}"
            f"<img src='data:image/png;base64,{image}' alt='deltas'><h2>What differs in the record</h2>{differences}{only}</body></html>\n")  # fmt: skip


def report_dir(comparison: Comparison) -> Path:
    name = names.safe_name(comparison.name, "comparison name", "It is made of the two experiments' names")
    return store.project_root() / "results" / COMPARISONS_DIR / name


def write(comparison: Comparison, out_dir: Optional[Path] = None) -> list[Path]:
    out_dir = out_dir or report_dir(comparison)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plots.png_bytes(figure(comparison), dpi=110)
    files = {"deltas.png": png, "comparison.md": markdown(comparison, "deltas.png").encode(), "comparison.html": _html(comparison, png).encode()}
    for name, data in files.items():
        (out_dir / name).write_bytes(data)
    comparison.table.to_csv(out_dir / "comparison.csv", index=False)
    comparison.differences.to_csv(out_dir / "differences.csv", index=False)
    return [out_dir / name for name in (*files, "comparison.csv", "differences.csv")]


def record(comparison: Comparison, files: list[Path]) -> str:
    """The comparison as a run of ``EXPERIMENT``: the report as its description and artifacts, the counts as metrics."""
    tags = {store.TAG_ROLE: ROLE, store.TAG_GIT_COMMIT: store.git_commit(), store.TAG_NOTE: markdown(comparison),
            store.TAG_COMPARED_A: comparison.a.parent_run_id or comparison.a.experiment,
            store.TAG_COMPARED_B: comparison.b.parent_run_id or comparison.b.experiment}  # fmt: skip
    run_id = store.client().create_run(store.experiment_id(EXPERIMENT), run_name=comparison.name, tags=tags).info.run_id
    store.log_batch(run_id, metrics=comparison.counts(), params={"a": comparison.a.experiment, "b": comparison.b.experiment})
    for path in files:
        store.client().log_artifact(run_id, str(path), ARTIFACT_DIR)
    store.end_run(run_id, "FINISHED")
    return run_id


def run(reference_a: str, reference_b: str, out_dir: Optional[Path] = None) -> tuple[Comparison, list[Path], str]:
    """``imagebench compare``: compare, write the report folder, record the comparison run."""
    comparison = compare(reference_a, reference_b)
    files = write(comparison, out_dir)
    return comparison, files, record(comparison, files)


def summary_lines(comparison: Comparison) -> list[str]:
    """What the terminal shows: the reading, one line per configuration, what differs."""
    lines = [comparison.reading, ""]
    for row in comparison.table.itertuples():
        interval = f"[{_points(row.delta_low)}, {_points(row.delta_high)}]" if pd.notna(row.delta_low) else ""
        tested = f"{_p(row.p_holm)} ({row.method})" if pd.notna(row.p_holm) else ""
        lines.append(f"  {row.configuration}: {100 * row.a_test_accuracy:.1f}% -> {100 * row.b_test_accuracy:.1f}%, "
                     f"{_points(row.delta)} points {interval} {tested} {row.verdict}".replace("  ", " "))  # fmt: skip
    if len(comparison.differences):
        lines += ["", "What differs in the record:"]
        lines += [f"  {row.kind} {row.name}: {row.a} -> {row.b}" for row in comparison.differences.itertuples()]
    for side, labels in (("A", comparison.only_in_a), ("B", comparison.only_in_b)):
        if labels:
            lines.append(f"Only in {side} (not compared): {', '.join(labels)}")
    return lines

