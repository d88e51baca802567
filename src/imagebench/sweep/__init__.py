"""A sweep: planning the trials from a sweep file (``grid``), choosing which run next
(``strategies``: grid, random, halving with its rungs), running them through an executor
(``scheduler``), recording how each ended (``outcomes``) and the whole loop with resume and
repeats (``runner``).

From outside, import what is named here; the submodules are the sweep's own business.
"""

from imagebench.store import results_dir
from imagebench.sweep.grid import SweepPlan, load_yaml, make_trial, plan_sweep
from imagebench.sweep.runner import SweepOptions, SweepSummary, check_sweep_data, run_sweep

__all__ = ["SweepOptions", "SweepPlan", "SweepSummary", "check_sweep_data", "load_yaml", "make_trial", "plan_sweep",
           "results_dir", "run_sweep"]
