"""``imagebench reproduce RUN``: one recorded trial run again from its MLflow record alone.

The record holds every parameter, the dataset's fingerprint, the git commit and the versions of the
packages that decide the numbers. The trial is run again with those parameters as a new run in the
same experiment, tagged ``imagebench.reproduces`` with the original's id and given the role
``reproduction`` (so neither resume nor the leaderboard ever takes it for the trial itself). Then
every recorded metric except the measured durations is compared: **identical**, **within the
tolerance**, or **different**, with the parts of the environment that differ. A dataset whose
fingerprint no longer matches is refused before anything runs: the numbers could not be compared.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

from imagebench import store
from imagebench.core import metrics
from imagebench.core.params import FIELD_NAMES, ParamsError, TrialParams, coerce_text, make_params
from imagebench.store import predictions

ROLE = "reproduction"
DEFAULT_TOLERANCE = 1e-6  # absolute, on every metric but the durations
IDENTICAL, WITHIN, DIFFERENT = "identical", "within tolerance", "different"


class ReproduceError(ParamsError):
    """The run cannot be reproduced as asked (exit 2, nothing ran)."""


@dataclass
class MetricComparison:
    key: str
    original: float
    again: float

    @property
    def difference(self) -> float:
        return self.again - self.original


@dataclass
class Reproduction:
    original_id: str
    run_id: str
    tolerance: float
    compared: list[MetricComparison]
    environment: list[str]  # what differs: "torch 2.14.1 -> 2.15.0", "git commit a1b2c3d -> e4f5a6b"
    same_predictions: Optional[float] = None  # share of test images predicted alike (None: not recorded)
    missing: list[str] = field(default_factory=list)  # metrics only one of the two runs has

    @property
    def verdict(self) -> str:
        if self.missing or any(not math.isclose(row.original, row.again, rel_tol=0, abs_tol=self.tolerance) for row in self.compared):
            return DIFFERENT
        return IDENTICAL if all(row.original == row.again for row in self.compared) else WITHIN

    def lines(self) -> list[str]:
        worst = max((abs(row.difference) for row in self.compared), default=0.0)
        said = {IDENTICAL: "every metric is identical", WITHIN: f"every metric within ±{self.tolerance:g} (largest difference {worst:.3g})",
                DIFFERENT: "metrics differ"}[self.verdict]  # fmt: skip
        lines = [f"reproduced run {self.original_id} as {self.run_id}: {said}"]
        lines += [f"  {row.key}: {row.original:.6g} -> {row.again:.6g} ({row.difference:+.3g})" for row in self.compared
                  if row.original != row.again]
        lines += [f"  {key}: recorded by only one of the two runs" for key in self.missing]
        if self.same_predictions is not None:
            lines.append(f"  the same prediction on {self.same_predictions:.1%} of the test images")
        lines.append("  environment: " + ("; ".join(self.environment) if self.environment else "the same package versions and git commit"))
        return lines


def find_run(reference: str, experiment: Optional[str] = None):
    """A FINISHED trial run by name within ``experiment`` or by id (``store.find_trial_run``)."""
    run = store.find_trial_run(reference, experiment)
    if run.info.status != "FINISHED":
        raise ReproduceError(f"run {run.info.run_id} is {run.info.status}: only a FINISHED trial has numbers to reproduce")
    return run


def params_of(run) -> TrialParams:
    """The trial's parameters as the record holds them (MLflow keeps every value as text)."""
    values = {key: None if text == "None" else coerce_text(text) for key, text in run.data.params.items() if key in FIELD_NAMES}
    missing = sorted(set(FIELD_NAMES) - set(values))
    if missing:
        raise ReproduceError(f"run {run.info.run_id} does not record the parameters {', '.join(missing)}: it was recorded by an "
                             "older imagebench, run it again with `imagebench trial --set ...` instead")  # fmt: skip
    return make_params(values, where=f"run {run.info.run_id}")


def check_dataset(run, params: TrialParams) -> str:
    """The dataset's fingerprint now; refused when it is not the recorded one."""
    from imagebench.data.load import dataset_fingerprint

    recorded = run.data.tags.get(store.TAG_DATASET_FINGERPRINT)
    now = dataset_fingerprint(params.dataset)
    if recorded and recorded != now:
        raise ReproduceError(f"dataset {params.dataset} changed since run {run.info.run_id}: its fingerprint was {recorded}, now {now} "
                             "(files added, removed or modified, or another scikit-learn for a built-in one); nothing was run")  # fmt: skip
    return now


def environment_differences(run, framework: str) -> list[str]:
    from imagebench.trial import environment_versions

    recorded = json.loads(run.data.tags.get(store.TAG_VERSIONS) or "{}")
    now = json.loads(environment_versions(framework))
    differences = [f"{name} {recorded.get(name, 'absent')} -> {now.get(name, 'absent')}"
                   for name in sorted(set(recorded) | set(now)) if recorded.get(name) != now.get(name)]
    commit, commit_now = run.data.tags.get(store.TAG_GIT_COMMIT, "unknown"), store.git_commit()
    if commit != commit_now:
        differences.append(f"git commit {commit} -> {commit_now}")
    return differences


def compare_metrics(original: dict[str, float], again: dict[str, float], tolerance: float, run_ids=("", "")) -> Reproduction:
    """Every final metric but the durations, in the metrics table's order."""
    keys = [metric.key for metric in metrics.METRICS if not metric.per_epoch and not metric.timing]
    both = [key for key in keys if key in original and key in again]
    missing = [key for key in keys if (key in original) != (key in again)]
    compared = [MetricComparison(key, original[key], again[key]) for key in both]
    return Reproduction(run_ids[0], run_ids[1], tolerance, compared, [], missing=missing)


def _same_predictions(original_id: str, run_id: str) -> Optional[float]:
    first, second = predictions.load(original_id), predictions.load(run_id)
    if first is None or second is None or first.test_set != second.test_set:
        return None
    return float((first.predicted == second.predicted).mean())


def reproduce(reference: str, experiment: Optional[str] = None, tolerance: Optional[float] = None, verbose: bool = False) -> Reproduction:
    """Run the recorded trial again as a new run linked to it, and compare (see the module's text)."""
    from imagebench.trial import run_trial, trial_tags

    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    if not tolerance >= 0:
        raise ReproduceError(f"--tolerance {tolerance} is invalid: give an absolute difference >= 0")
    original = find_run(reference, experiment)
    params = params_of(original)
    fingerprint = check_dataset(original, params)
    environment = environment_differences(original, params.framework)
    tags = {**trial_tags(params, fingerprint), store.TAG_ROLE: ROLE, store.TAG_REPRODUCES: original.info.run_id,
            store.TAG_NOTE: f"Reproduction of run {original.info.run_id} ({original.info.run_name}) from its record."}  # fmt: skip
    run_id = store.create_trial_run(params.experiment, f"{original.info.run_name}-reproduced", tags, parent_run_id=None)
    result = run_trial(params, run_id=run_id, verbose=verbose)
    again = store.client().get_run(result.run_id).data.metrics
    reproduction = compare_metrics(original.data.metrics, again, tolerance, (original.info.run_id, run_id))
    reproduction.environment = environment
    reproduction.same_predictions = _same_predictions(original.info.run_id, run_id)
    store.set_tags(run_id, {store.TAG_REPRODUCTION: reproduction.verdict})
    return reproduction
