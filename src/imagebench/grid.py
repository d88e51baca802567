"""Sweep file → list of validated trials.

A sweep file is declarative::

    experiment: demo            # MLflow experiment (= sweep name)
    base: {dataset: digits}     # applied to every trial
    matrix:                     # product of these axes
      framework: [keras, torch]
      model: [cnn, vgg16]
    exclude:                    # drop product entries matching every key given (a list = any of)
      - {framework: torch, model: vgg16}
    include:                    # extra trials: base + this entry
      - {model: cnn, learning_rate: 0.01}

Every trial is validated before anything runs, so a typo fails the sweep in a second, not at trial 17.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from imagebench.data.load import dataset_fingerprint
from imagebench.fingerprint import trial_fingerprint
from imagebench.params import FIELD_NAMES, ParamsError, TrialParams, make_params, unknown_key_message

SWEEP_KEYS = ("experiment", "base", "matrix", "exclude", "include")


@dataclass(frozen=True)
class Trial:
    index: int
    name: str
    params: TrialParams
    fingerprint: str
    dataset_fingerprint: str
    varying: dict[str, Any]  # the values that distinguish this trial from base


@dataclass
class SweepPlan:
    experiment: str
    source: str
    trials: list[Trial]

    def counts(self):
        """Trials per (model, framework)."""
        return self.table().groupby(["model", "framework"]).size().rename("trials").reset_index()

    def table(self):
        import pandas as pd

        # every parameter that varies anywhere in the sweep, with each trial's resolved value
        varying = list(dict.fromkeys(key for trial in self.trials for key in trial.varying))
        rows = [
            {"trial": t.name, "framework": t.params.framework, "model": t.params.model, **{k: getattr(t.params, k) for k in varying}}
            for t in self.trials
        ]
        return pd.DataFrame(rows)


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"sweep file '{path}' does not exist")
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(content, dict):
        raise ParamsError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(content) - set(SWEEP_KEYS))
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {unknown}; allowed: {', '.join(SWEEP_KEYS)}")
    return content


def _check_keys(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ParamsError(f"{where}: expected a mapping of parameter: value, got {entry!r}")
    for key in entry:
        if key not in FIELD_NAMES:
            raise ParamsError(unknown_key_message(key, where))
    return entry


def _matrix_entries(matrix: dict[str, Any], where: str) -> list[dict[str, Any]]:
    _check_keys(matrix, f"{where} matrix")
    axes = {key: values if isinstance(values, list) else [values] for key, values in matrix.items()}
    for key, values in axes.items():
        if not values:
            raise ParamsError(f"{where} matrix: axis '{key}' is empty; give at least one value")
    return [dict(zip(axes, combination)) for combination in itertools.product(*axes.values())]


def _matches(entry: dict[str, Any], rule: dict[str, Any]) -> bool:
    def matches_value(value: Any, wanted: Any) -> bool:
        return value in wanted if isinstance(wanted, list) else value == wanted

    return all(key in entry and matches_value(entry[key], wanted) for key, wanted in rule.items())


def expand(content: dict[str, Any], where: str = "sweep") -> list[dict[str, Any]]:
    """Raw trial dicts (varying part only, before base and overrides) in a stable order."""
    entries = _matrix_entries(content.get("matrix") or {}, where)
    rules = [_check_keys(rule, f"{where} exclude") for rule in content.get("exclude") or []]
    kept = [entry for entry in entries if not any(_matches(entry, rule) for rule in rules)]
    extra = [_check_keys(entry, f"{where} include") for entry in content.get("include") or []]
    return kept + [dict(entry) for entry in extra]


def make_trial(index: int, params: TrialParams, dataset_fp: str, varying: dict[str, Any], suffix: str = "") -> Trial:
    fingerprint = trial_fingerprint(params, dataset_fp)
    name = f"{index:03d}-{params.framework}-{params.model}-{fingerprint[:8]}{suffix}"
    return Trial(index, name, params, fingerprint, dataset_fp, varying)


def _with_axes(content: dict[str, Any], axes: dict[str, list[Any]], where: str) -> dict[str, Any]:
    """Replace matrix axes (``--models``, ``--frameworks``): the values become the axis, base loses the key."""
    if not axes:
        return content
    _check_keys(axes, f"{where} (command-line axes)")
    base = {key: value for key, value in (content.get("base") or {}).items() if key not in axes}
    return {**content, "base": base, "matrix": {**(content.get("matrix") or {}), **axes}}


def plan_sweep(
    path: str | Path,
    overrides: Optional[dict[str, Any]] = None,
    experiment: Optional[str] = None,
    axes: Optional[dict[str, list[Any]]] = None,
) -> SweepPlan:
    where = str(path)
    content = _with_axes(read_sweep_file(path), axes or {}, where)
    base = _check_keys(content.get("base") or {}, f"{where} base")
    overrides = overrides or {}
    name = experiment or content.get("experiment") or Path(path).stem
    fingerprints: dict[str, str] = {}
    trials, seen = [], set()
    for varying in expand(content, where):
        values = {**base, **varying, **overrides, "experiment": name}
        params = make_params(values, where=f"{where} trial {varying}")
        data_fp = fingerprints.setdefault(params.dataset, dataset_fingerprint(params.dataset))
        shown = {key: value for key, value in varying.items() if key not in ("framework", "model")}
        trial = make_trial(len(trials) + 1, params, data_fp, shown)
        if trial.fingerprint in seen:  # include entries may repeat a product entry: run it once
            continue
        seen.add(trial.fingerprint)
        trials.append(trial)
    if not trials:
        raise ParamsError(f"{where}: the sweep expands to no trials (check matrix and exclude)")
    return SweepPlan(experiment=name, source=str(Path(path).resolve()), trials=trials)
