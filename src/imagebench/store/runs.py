"""Creating, finding, writing and ending MLflow runs and experiments."""

from __future__ import annotations

import time
from typing import Any, Optional

from imagebench.core import names
from imagebench.core.params import ParamsError
from imagebench.store.client import client
from imagebench.store.keys import EXPERIMENT_KIND, TAG_ERROR, TAG_EXPERIMENT_KIND, TAG_GIT_COMMIT, TAG_OWNER, TAG_PARENT, TAG_ROLE, TAG_SWEEP, TAG_TRIAL
from imagebench.store.paths import default_tracking_uri, project_root, tracking_uri
from imagebench.store.provenance import git_commit, process_owner


def _artifact_location(name: str) -> Optional[str]:
    """Keep the embedded store's artifacts beside mlflow.db rather than wherever the cwd happens to be."""
    if tracking_uri() != default_tracking_uri():
        return None  # a tracking server decides for itself
    return (project_root() / "mlartifacts" / names.safe_name(name, "experiment")).as_uri()


def experiment_id(name: str) -> str:
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            mlflow_client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name, artifact_location=_artifact_location(name),
                                               tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})  # fmt: skip
    except Exception:  # another process created it between our look-up and create
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def find_sweep_run(experiment: str) -> Optional[str]:
    runs = client().search_runs(
        [experiment_id(experiment)], filter_string=f"tags.`{TAG_ROLE}` = 'sweep'", max_results=1, order_by=["attributes.start_time DESC"]
    )
    return runs[0].info.run_id if runs else None


def start_sweep_run(experiment: str, source: str) -> str:
    """The sweep's parent run: reused when the same sweep is run again, so resumes stay together."""
    existing = find_sweep_run(experiment)
    # experiments made before the tag (or by MLflow itself) open on the GenAI overview otherwise
    client().set_experiment_tag(experiment_id(experiment), TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)
    if existing:
        client().update_run(existing, status="RUNNING")
        return existing
    run = client().create_run(
        experiment_id(experiment),
        run_name=f"sweep-{experiment}",
        tags={TAG_ROLE: "sweep", TAG_SWEEP: experiment, TAG_GIT_COMMIT: git_commit(), "imagebench.sweep_file": source,
              TAG_OWNER: process_owner()},  # from its first moment: a second sweep started at once sees whose it is
    )
    return run.info.run_id


def search_trial_runs(experiment: str, extra_filter: str = "") -> list:
    """Every trial (child) run of ``experiment``, all pages; [] when the experiment does not exist."""
    mlflow_client = client()
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return []
    query = f"tags.`{TAG_ROLE}` = 'trial'" + (f" and {extra_filter}" if extra_filter else "")
    runs, token = [], None
    while True:
        page = mlflow_client.search_runs([found.experiment_id], filter_string=query, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def reopen_run(run_id: str) -> None:
    """Set a finished trial run RUNNING again (the next halving rung continues the same run)."""
    client().update_run(run_id, status="RUNNING")
    set_tags(run_id, {TAG_OWNER: process_owner()})


def create_trial_run(experiment: str, trial_name: str, tags: dict[str, str], parent_run_id: Optional[str]) -> str:
    all_tags = {
        TAG_ROLE: "trial", TAG_TRIAL: trial_name, TAG_SWEEP: experiment, TAG_GIT_COMMIT: git_commit(),
        TAG_OWNER: process_owner(), **tags,
    }  # fmt: skip
    if parent_run_id:
        all_tags[TAG_PARENT] = parent_run_id
    run = client().create_run(experiment_id(experiment), run_name=trial_name, tags=all_tags)
    return run.info.run_id


def now_ms() -> int:
    return int(time.time() * 1000)


def end_run(run_id: str, status: str, error: Optional[str] = None, end_time: Optional[int] = None) -> None:
    if error:
        client().set_tag(run_id, TAG_ERROR, error[:5000])
    client().set_terminated(run_id, status=status, end_time=end_time or now_ms())


def run_status(run_id: str) -> str:
    return client().get_run(run_id).info.status


def log_batch(run_id: str, metrics: Optional[dict[str, float]] = None, params: Optional[dict[str, Any]] = None,
              tags: Optional[dict[str, Any]] = None, step: int = 0, timestamp: Optional[int] = None) -> None:
    """Metrics (at ``step``, ``timestamp`` default now), params and tags of a run in one write."""
    log_batches(run_id, [{"metrics": metrics or {}, "step": step, "timestamp": timestamp or now_ms(),
                          "params": {key: param_text(value) for key, value in (params or {}).items()},
                          "tags": {key: str(value) for key, value in (tags or {}).items()}}])  # fmt: skip


def log_batches(run_id: str, batches: list[dict[str, Any]]) -> None:
    """Several journal-style batches (``metrics`` at ``step`` and ``timestamp``, ``params`` and ``tags``
    as text) in one write, each metric keeping its own step and time: the one MLflow batch writer."""
    from mlflow.entities import Metric, Param, RunTag

    client().log_batch(
        run_id,
        metrics=[Metric(key, float(value), batch["timestamp"], batch["step"]) for batch in batches for key, value in batch["metrics"].items()],
        params=[Param(key, value) for batch in batches for key, value in batch["params"].items()],
        tags=[RunTag(key, value) for batch in batches for key, value in batch["tags"].items()],
    )


def log_params(run_id: str, values: dict[str, Any]) -> None:
    log_batch(run_id, params=values)


def param_text(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(item) for item in value)
    return str(value)


def log_metrics(run_id: str, values: dict[str, float], step: int = 0, timestamp: Optional[int] = None) -> None:
    log_batch(run_id, metrics=values, step=step, timestamp=timestamp)


def log_dataset(run_id: str, name: str, digest: str, source: str, profile: dict[str, Any]) -> None:
    """The trial's data as an MLflow dataset input: the UI's Dataset column names it (name, digest)
    and its profile holds the split sizes. Metadata only: the images stay where they are."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest[:36], source_type="local" if source.startswith("/") else "builtin",
                      source=json.dumps({"uri": source}), schema=None, profile=json.dumps(profile))  # fmt: skip
    inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])]
    try:
        client().log_inputs(run_id, datasets=inputs)
    except Exception as exc:
        if "unique" not in str(exc).lower():
            raise
        # parallel trials of a sweep registered the same dataset at the same moment (MLflow looks it
        # up, then inserts it): the other insert won, so linking this run to that row is what is left
        client().log_inputs(run_id, datasets=inputs)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    log_batch(run_id, tags=tags)


RUN_ID_LENGTH = 32  # MLflow's run ids: 32 hex digits


class RunNotFound(ParamsError):
    """A run named on the command line is not a trial run of the store (bad input: exit 2)."""


def find_trial_run(reference: str, experiment: Optional[str] = None):
    """The trial run ``reference`` names: a run name within ``experiment`` (the latest, when a
    --rerun reused it), else a run id. Anything else (another role, unknown) is RunNotFound."""
    from mlflow.exceptions import MlflowException

    by_name = [run for run in search_trial_runs(experiment) if run.info.run_name == reference] if experiment else []
    if by_name:
        return max(by_name, key=lambda run: run.info.start_time)
    if len(reference) != RUN_ID_LENGTH:
        where = f"in experiment '{experiment}'" if experiment else "(give --experiment to find a run by its name)"
        raise RunNotFound(f"no trial run named '{reference}' {where}: give a run id or a trial run's name")
    try:
        run = client().get_run(reference)
    except MlflowException:
        raise RunNotFound(f"run {reference} is not in the store {tracking_uri()}") from None
    role = run.data.tags.get(TAG_ROLE)
    if role != "trial":
        raise RunNotFound(f"run {reference} is not a trial run (role {role!r}): give one of a sweep's child runs")
    return run
