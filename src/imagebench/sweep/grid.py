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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from imagebench.core import names
from imagebench.data.load import dataset_fingerprint
from imagebench.trial.fingerprint import trial_fingerprint
from imagebench.core.planned import Trial
from imagebench.core.params import FIELD_NAMES, ParamsError, TrialParams, make_params, unknown_key_message

# What each top-level key holds; a null value of the last four means "none" (a key left empty)
SHAPES = {
    "experiment": (str, "a name", 'experiment: flowers   (quote a number: experiment: "2024")'),
    "base": (dict, "a mapping of parameter: value", "base: {dataset: digits, epochs: 5}"),
    "matrix": (dict, "a mapping of parameter: [values]", "matrix: {framework: [keras, torch], model: [cnn, vgg16]}"),
    "exclude": (list, "a list of rules", "exclude:\n      - {framework: torch, model: vgg16}"),
    "include": (list, "a list of trials", "include:\n      - {model: cnn, learning_rate: 0.01}"),
}
SWEEP_KEYS = tuple(SHAPES)


@dataclass
class SweepPlan:
    experiment: str
    source: str
    trials: list[Trial]
    warnings: list[str] = field(default_factory=list)  # rules that change nothing (shown on stderr, the sweep runs)

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


class _DuplicateKey(Exception):
    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__(key, first_line, second_line)
        self.key, self.first_line, self.second_line = key, first_line, second_line


class StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping, at any depth (YAML keeps
    the last one silently: two ``experiment:`` lines would run under the second name)."""

    def construct_mapping(self, node, deep=False):
        lines: dict[Any, int] = {}
        for key_node, _value in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges are meant to be overridden by the keys beside them
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in lines:
                    raise _DuplicateKey(key, lines[key], line)
                lines[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error names it
                continue
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, where: str) -> Any:
    """``text`` parsed with ``StrictLoader``; a syntax error or a repeated key is a ParamsError naming ``where``."""
    loader = StrictLoader(text)
    loader.name = where  # YAML's messages name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    except _DuplicateKey as dup:
        raise ParamsError(f"{where}: key '{dup.key}' is given twice, on line {dup.first_line} and line {dup.second_line}; "
                          f"keep one") from None  # fmt: skip
    except yaml.YAMLError as exc:
        raise ParamsError(f"{where}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """The sweep file's mapping, every top-level key checked for its shape (``SHAPES``)."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"sweep file '{path}' does not exist")
    content = load_yaml(path.read_text(encoding="utf-8"), str(path))
    if content is None or content == {}:  # an empty file, a lone `---`, only comments
        raise ParamsError(f"{path}: the sweep file is empty; give at least `matrix:` or `base:` (see params/demo.yaml)")
    if not isinstance(content, dict):
        raise ParamsError(f"{path}: expected a mapping with keys {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(content) - set(SWEEP_KEYS), key=str)
    if unknown:
        raise ParamsError(f"{path}: unknown top-level key(s) {unknown}; allowed: {', '.join(SWEEP_KEYS)}")
    for key, value in content.items():
        kind, shape, example = SHAPES[key]
        if not isinstance(value, kind) and (value is not None or key == "experiment"):
            found = "is empty" if value is None else f"is {value!r}"
            raise ParamsError(f"{path}: key '{key}' {found}; it must be {shape}, for example:\n    {example}")
    return content


def _check_keys(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise ParamsError(f"{where}: expected a mapping of parameter: value, got {entry!r}")
    for key in entry:
        if not isinstance(key, str) or key not in FIELD_NAMES:
            raise ParamsError(unknown_key_message(str(key), where))
    return entry


def _matrix_entries(matrix: dict[str, Any], where: str) -> list[dict[str, Any]]:
    _check_keys(matrix, f"{where} matrix")
    axes = {key: values if isinstance(values, list) else [values] for key, values in matrix.items()}
    for key, values in axes.items():
        if not values:
            raise ParamsError(f"{where} matrix: axis '{key}' is empty; give at least one value")
    return [dict(zip(axes, combination)) for combination in itertools.product(*axes.values())]


def _rules(content: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """The ``exclude`` rules or ``include`` entries, each a mapping of known parameters."""
    rules = [_check_keys(rule, f"{where} {key} entry {number}") for number, rule in enumerate(content.get(key) or [], 1)]
    if key == "exclude":
        for number, rule in enumerate(rules, 1):
            if not rule:
                raise ParamsError(f"{where} exclude entry {number} is empty: it would drop every trial; remove it")
    return rules


def _matches(entry: dict[str, Any], rule: dict[str, Any]) -> bool:
    def matches_value(value: Any, wanted: Any) -> bool:
        return value in wanted if isinstance(wanted, list) else value == wanted

    return all(key in entry and matches_value(entry[key], wanted) for key, wanted in rule.items())


def _shown(entry: dict[str, Any]) -> str:
    """A rule or trial as it is written in a sweep file: {model: cnn, learning_rate: 0.01}."""
    return "{" + ", ".join(f"{key}: {value}" for key, value in entry.items()) + "}"


def _sourced_entries(content: dict[str, Any], where: str) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Raw trial dicts (varying part only, before base and overrides) in a stable order, each with
    what made it ("matrix", "include entry N"), and a warning for each exclude rule that drops nothing."""
    entries = _matrix_entries(content.get("matrix") or {}, where)
    rules = _rules(content, "exclude", where)
    kept = [("matrix", entry) for entry in entries if not any(_matches(entry, rule) for rule in rules)]
    extra = [(f"include entry {number}", dict(entry)) for number, entry in enumerate(_rules(content, "include", where), 1)]
    idle = [f"{where} exclude entry {number} {_shown(rule)} matches no trial of the matrix: it drops nothing"
            for number, rule in enumerate(rules, 1) if not any(_matches(entry, rule) for entry in entries)]  # fmt: skip
    return kept + extra, idle


def expand(content: dict[str, Any], where: str = "sweep") -> list[dict[str, Any]]:
    """Raw trial dicts (varying part only, before base and overrides) in a stable order."""
    return [entry for _source, entry in _sourced_entries(content, where)[0]]


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
    # an include entry of a model (framework) outside --models (--frameworks) was not asked for either
    include = [entry for entry in content.get("include") or []
               if not isinstance(entry, dict) or all(entry[key] in values for key, values in axes.items() if key in entry)]
    return {**content, "base": base, "matrix": {**(content.get("matrix") or {}), **axes}, "include": include}


def _experiment_name(content: dict[str, Any], path: str | Path, experiment: Optional[str]) -> str:
    """The sweep's experiment: ``--experiment``, else the file's ``experiment:``, else the file's name;
    a name that cannot be a folder under results/ is refused naming where it came from."""
    if experiment is not None:
        return names.safe_name(experiment, "--experiment")
    if "experiment" in content:
        return names.safe_name(content["experiment"], f"{path}: experiment")
    return names.safe_name(Path(path).stem, f"{path}: experiment (from the file's name: the file sets no `experiment:`)",
                           "Add `experiment: NAME` to the file or give --experiment NAME")  # fmt: skip


def plan_sweep(
    path: str | Path,
    overrides: Optional[dict[str, Any]] = None,
    experiment: Optional[str] = None,
    axes: Optional[dict[str, list[Any]]] = None,
) -> SweepPlan:
    where = str(path)
    content = _with_axes(read_sweep_file(path), axes or {}, where)
    name = _experiment_name(content, path, experiment)
    base = _check_keys(content.get("base") or {}, f"{where} base")
    overrides = overrides or {}
    fingerprints: dict[str, str] = {}
    entries, warnings = _sourced_entries(content, where)
    trials, seen = [], {}
    for source, varying in entries:
        values = {**base, **varying, **overrides, "experiment": name}
        params = make_params(values, where=f"{where} trial {varying}")
        data_fp = fingerprints.setdefault(params.dataset, dataset_fingerprint(params.dataset))
        shown = {key: value for key, value in varying.items() if key not in ("framework", "model")}
        trial = make_trial(len(trials) + 1, params, data_fp, shown)
        if trial.fingerprint in seen:  # include entries may repeat a product entry: run it once
            warnings.append(f"{where} {source} {_shown(varying)} adds no trial: it is trial {seen[trial.fingerprint]} again")
            continue
        seen[trial.fingerprint] = trial.name
        trials.append(trial)
    if not trials:
        raise ParamsError(f"{where}: the sweep expands to no trials (check matrix and exclude)")
    return SweepPlan(experiment=name, source=str(Path(path).resolve()), trials=trials, warnings=warnings)
