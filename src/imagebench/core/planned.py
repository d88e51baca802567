"""A trial as the sweep planned it: what the planner makes, the executors run and the sweep records.

It lives below every layer that hands it on (executors run a ``Job`` holding one), so none of
them has to import the planner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from imagebench.core.params import TrialParams


@dataclass(frozen=True)
class Trial:
    index: int
    name: str
    params: TrialParams
    fingerprint: str  # identity of the trial: resume, halving rungs and repeats find it by this
    dataset_fingerprint: str
    varying: dict[str, Any]  # the values that distinguish this trial from base
