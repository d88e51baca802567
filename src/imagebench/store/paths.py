"""Where things live: the project root, ``results/<experiment>/`` and the default SQLite store."""

from __future__ import annotations

import os
from pathlib import Path

from imagebench.core import names
from imagebench.core.contract import ENV_ROOT

MARKERS = ("params", "notebooks")  # a folder holding both is an imagebench project root


def project_root() -> Path:
    """``$IMAGEBENCH_ROOT``, else the nearest folder above the cwd with params/ and notebooks/, else the cwd.

    JupyterLab starts kernels in notebooks/, papermill wherever it is typed; both must find the same store.
    """
    if os.environ.get(ENV_ROOT):
        return Path(os.environ[ENV_ROOT]).resolve()
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if all((folder / marker).is_dir() for marker in MARKERS):
            return folder
    return cwd


def results_dir(experiment: str) -> Path:
    """Where an experiment's leaderboard, plots and per-trial outputs go: every path built from an
    experiment's name starts here, so a name that is not ``names.NAME_RULE`` is refused here."""
    fix = "Its files go to results/<experiment>/: choose another name (an experiment made in MLflow can be renamed there)"
    return project_root() / "results" / names.safe_name(experiment, "experiment", fix)


def runs_dir(experiment: str) -> Path:
    """Per-trial outputs: executed notebooks, logs, and record folders kept while the store was down."""
    return results_dir(experiment) / "runs"


def default_tracking_uri() -> str:
    return f"sqlite:///{project_root() / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
