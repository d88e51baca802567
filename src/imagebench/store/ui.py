"""Links into the MLflow UI, always in its Model-training view."""

from __future__ import annotations

from typing import Optional

from imagebench.store.paths import tracking_uri
from imagebench.store.runs import experiment_id


def ui_base_url() -> Optional[str]:
    """Where a reviewer opens the MLflow UI of this store: the tracking server itself, or `make ui`
    (127.0.0.1:5000) when it runs over the embedded store; None when there is no UI to point at."""
    import urllib.request

    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    try:
        with urllib.request.urlopen("http://127.0.0.1:5000/health", timeout=1):
            return "http://127.0.0.1:5000"
    except OSError:
        return None


# MLflow 3.17's UI opens an experiment on its GenAI pages (the experiment's tags aside) unless the
# URL asks for the Model-training view, or the browser remembers its "Model training" toggle
UI_MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def ui_route(experiment: str, run_id: Optional[str] = None, tab: Optional[str] = None, search: Optional[str] = None) -> str:
    """The UI's route (after the host) to a run's page (``tab``: e.g. "artifacts"), or to the
    experiment's runs table with ``search`` filled in, in the Model-training view: every UI link
    imagebench prints or writes is built here. On its own it is a link inside the UI (a description)."""
    import urllib.parse

    route = "/".join(["#/experiments", experiment_id(experiment), "runs", *([run_id] if run_id else []), *([tab] if tab else [])])
    query = UI_MODEL_TRAINING_VIEW + (f"&searchFilter={urllib.parse.quote(search)}" if search else "")
    return f"{route}?{query}"


def run_url(base: str, experiment: str, run_id: Optional[str] = None, tab: Optional[str] = None,
            search: Optional[str] = None) -> str:
    """``ui_route`` on the UI at ``base`` (``ui_base_url``)."""
    return f"{base}/{ui_route(experiment, run_id, tab, search)}"
