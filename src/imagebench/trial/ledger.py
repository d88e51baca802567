"""A trial's cost ledger: the seconds each phase outside its epochs took (``metrics.TRIAL_COSTS``).

Phases are timed with ``phase``; the store writes made inside one are taken out of it and counted
once, as the recorder's ``store_seconds`` (plus the run's creation, timed before the recorder
exists). Training is timed as a phase too (not recorded here: it is ``cost/train_seconds``) so
that ``other`` is only what no phase covers: the trial's glue.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

from imagebench.core import metrics

TRAINING = "training"  # the epochs: timed to be left out of ``other``, recorded as cost/train_seconds


class CostLedger:
    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.earlier: dict[str, float] = {}  # the ledger of the rungs before this one (a trial continued by halving)
        self.seconds: dict[str, float] = {}
        self.recorder = None  # the run's RunRecorder, once the run is open (its writes are the store's cost)

    def _store_seconds(self) -> float:
        return self.recorder.store_seconds if self.recorder is not None else 0.0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (a ``metrics.TRIAL_COSTS`` key or TRAINING), less its store writes."""
        started, store_before = time.perf_counter(), self._store_seconds()
        try:
            yield
        finally:
            spent = time.perf_counter() - started - (self._store_seconds() - store_before)
            self.seconds[name] = self.seconds.get(name, 0.0) + spent

    def totals(self) -> dict[str, float]:
        """Every ``metrics.TRIAL_COSTS`` key in seconds, this rung's plus the earlier rungs'."""
        wall = time.perf_counter() - self.started
        now = {metric.key: self.seconds.get(metric.key, 0.0) for metric in metrics.TRIAL_COSTS}
        now[metrics.STORE_SECONDS.key] += self._store_seconds()  # (the run's creation, timed as a phase, + the recorder's)
        accounted = sum(now.values()) + self.seconds.get(TRAINING, 0.0)  # (other is still 0 here)
        now[metrics.OTHER_SECONDS.key] = max(0.0, wall - accounted)
        return {key: value + self.earlier.get(key, 0.0) for key, value in now.items()}
