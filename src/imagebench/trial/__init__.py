"""One trial, as train.ipynb runs it: data, model from its backend, training, test evaluation,
figures and the kept model, all written to its MLflow run (``run``); its fingerprints
(``fingerprint``); the kept model a leader's export reloads (``trained``).

From outside, import what is named here.
"""

from imagebench.trial.run import TrialResult, environment_versions, run_trial, trial_tags

__all__ = ["TrialResult", "environment_versions", "run_trial", "trial_tags"]
