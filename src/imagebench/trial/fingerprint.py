"""Stable identity of a trial: resolved parameters + dataset content.

Two spellings of the same trial (key order, ``1e-3`` vs ``0.001``, ``./data`` vs ``/abs/data``)
give the same fingerprint; any change of a value or of the data gives a different one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from imagebench.data.folders import BUILTIN_DATASETS
from imagebench.core.params import TrialParams

# The experiment names where a trial is filed, not what it is.
NOT_IDENTITY = ("experiment",)
# Switches added after sweeps were recorded: left out while at their default, so finished trials
# keep their fingerprints (and are not re-run) when a release adds a switch; set, they count.
OMITTED_AT_DEFAULT = ("mixed_precision", "channels_last", "compile")


def _canonical(params: TrialParams, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    values = {key: value for key, value in params.tracked().items() if key not in NOT_IDENTITY + ignore}
    for key in OMITTED_AT_DEFAULT:
        if values[key] == TrialParams.model_fields[key].default:
            del values[key]
    if values["dataset"] not in BUILTIN_DATASETS and Path(values["dataset"]).expanduser().exists():
        values["dataset"] = str(Path(values["dataset"]).expanduser().resolve())
    return values


def _digest(values: dict[str, Any], dataset_fingerprint: str) -> str:
    payload = json.dumps({"params": values, "data": dataset_fingerprint}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def trial_fingerprint(params: TrialParams, dataset_fingerprint: str) -> str:
    return _digest(_canonical(params), dataset_fingerprint)


def config_fingerprint(params: TrialParams, dataset_fingerprint: str) -> str:
    """The trial's identity without its seed: repeated seeds of one configuration share it."""
    return _digest(_canonical(params, ignore=("seed",)), dataset_fingerprint)
