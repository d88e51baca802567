"""The MLflow record: where it lives, what each run holds, and the names the leaderboard reads.

Experiment = sweep name; one parent run per sweep; one child run per trial. All names of tags,
params, metrics and artifacts are defined here and nowhere else.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from imagebench import names
from imagebench.contract import ENV_ROOT, ENV_RUN_ID  # noqa: F401  (the sweep-kernel contract names them)

TAG_ROLE = "imagebench.role"  # "sweep" (parent) or "trial" (child)
TAG_SWEEP = "imagebench.sweep"
TAG_TRIAL = "imagebench.trial"
TAG_MODEL = "imagebench.model"
TAG_FRAMEWORK = "imagebench.framework"
TAG_FINGERPRINT = "imagebench.fingerprint"
TAG_DATASET_FINGERPRINT = "imagebench.dataset_fingerprint"
TAG_GIT_COMMIT = "imagebench.git_commit"
TAG_VERSIONS = "imagebench.versions"
TAG_ERROR = "imagebench.error"
TAG_NOTEBOOK = "imagebench.notebook"
TAG_EPOCH_BUDGET = "imagebench.epoch_budget"  # epochs the trial has been trained up to (halving: per rung)
TAG_OWNER = "imagebench.owner"  # host:pid of the process that drives the run (finds runs left RUNNING)
TAG_STRATEGY = "imagebench.strategy"
TAG_EXECUTOR = "imagebench.executor"  # where the sweep ran its trials: local | ray
TAG_RUNG = "imagebench.rung"
TAG_FEATURE_CACHE = "imagebench.feature_cache"  # "hit" / "computed" when the head trained on cached features
TAG_KERNEL = "imagebench.kernel"  # host:pid of the process that trained it (a sweep's warm kernel serves several)
TAG_NODE = "imagebench.node"  # where the executor ran the trial (a Ray node: host, address and node id)
TAG_CONFIG = "imagebench.config"  # fingerprint without the seed: repeats of one configuration share it
TAG_RELOGGED = "imagebench.relogged"  # the record was replayed from a local journal (store was down)
TAG_LEADER = "imagebench.leader"  # "true" on each leaderboard row's run: one UI search shows the leaderboard
TAG_RANK = "imagebench.rank"  # its rank on the leaderboard (1 = the winner on validation)
TAG_COMMAND = "imagebench.command"  # on the parent run: the command that reproduces the sweep
TAG_NOTE = "mlflow.note.content"  # a run's description, shown on its overview page in the UI
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI opens "custom_model_development" on the runs table
EXPERIMENT_KIND = "custom_model_development"
TAG_PARENT = "mlflow.parentRunId"
TAG_RUN_NAME = "mlflow.runName"

# The one selection rule, for the leaderboard and for halving's promotions: the best validation
# accuracy, ties to the lower validation loss. Test metrics never choose.
RANKING = ("best/val_accuracy", "best/val_loss")
RANKING_ASCENDING = (False, True)


def ranking_key(val_accuracy: float, val_loss: float) -> tuple[float, float]:
    """Sort key of RANKING: smaller is better."""
    return (-val_accuracy, val_loss)


EPOCH_METRICS = ("train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr")
FINAL_METRICS = (
    "test/accuracy",
    "test/loss",
    "test/macro_f1",
    "test/top5_accuracy",  # only with more than 5 classes
    "best_epoch",
    "best/val_accuracy",
    "best/val_loss",
    "epochs_run",
    "cost/params",
    "cost/trainable_params",
    "cost/train_seconds",
    "cost/latency_ms",
    "cost/flops",  # forward FLOPs per image (multiply-add = 2), counted in the trial's framework
)
ARTIFACT_CONFUSION_PNG = "confusion_matrix.png"
ARTIFACT_CONFUSION_JSON = "confusion_matrix.json"
ARTIFACT_CURVES_PNG = "learning_curves.png"
ARTIFACT_REPORT = "classification_report.txt"
ARTIFACT_CLASS_MAP = "class_map.json"
ARTIFACT_SKIPPED = "skipped_files.txt"
ARTIFACT_NOTEBOOK_DIR = "notebook"
ARTIFACT_EXPORTS = "exports"  # a leader's portable files (ONNX, .keras / .pt2) and the checks they passed
LOGGED_MODEL_NAME = "model"  # a leader's MLflow model (its own flavour), in the run's Models column
CHAMPION_ALIAS = "champion"  # registry alias of the experiment's overall winner
TAG_REGISTERED_EXPERIMENT = "imagebench.experiment"  # on each registered model: the sweep it came from


def registered_model_name(experiment: str, model: str, framework: str) -> str:
    """One registered model per experiment, model and framework; each publication of a leader is a version.
    Every part follows ``names.NAME_RULE`` (a registry on a file store keeps the name as a folder)."""
    parts = [names.safe_name(value, what) for value, what in ((experiment, "experiment"), (framework, "framework"), (model, "model"))]
    return ".".join(parts)


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


# Several processes (the sweep, parallel trial kernels) write one SQLite store; SQLite answers
# "database is locked" when a writer holds it, and a tracking server may be briefly unreachable.
# Every client call is retried with backoff on those errors for up to the store patience, so no
# metric is dropped by a short outage. A store still down after that is StoreUnavailable: the
# trial's recorder (``record.RunRecorder``) then keeps the rest of its record in a local journal.
RETRY_MARKERS = ("database is locked", "database table is locked", "busy", "connection refused",
                 "max retries exceeded", "temporarily unavailable", "unable to open database file",
                 "disk i/o error", "failed to establish a new connection", "connection aborted",
                 "connection reset", "read timed out", "service unavailable", "bad gateway")  # fmt: skip
ENV_STORE_PATIENCE = "IMAGEBENCH_STORE_PATIENCE"
DEFAULT_STORE_PATIENCE = 60.0  # seconds a store may be unreachable before a write is given up
FIRST_DELAY, LONGEST_DELAY = 0.05, 5.0


class StoreUnavailable(RuntimeError):
    """The MLflow store did not answer within the store patience (``$IMAGEBENCH_STORE_PATIENCE``)."""

    @classmethod
    def after(cls, uri: str, seconds: float, cause: BaseException) -> "StoreUnavailable":
        first_line = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:300]
        return cls(
            f"MLflow store {uri} still unavailable after {seconds:.0f}s of retries ({type(cause).__name__}: {first_line}). "
            f"Check that the tracking server runs / the database file is not held by another program; "
            f"wait longer with {ENV_STORE_PATIENCE}=SECONDS"
        )


def store_patience() -> float:
    text = os.environ.get(ENV_STORE_PATIENCE, "").strip()
    if not text:
        return DEFAULT_STORE_PATIENCE
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{ENV_STORE_PATIENCE}={text!r} is invalid: give the seconds to wait for the MLflow store (e.g. 60)")
    return value


def is_transient(error: BaseException) -> bool:
    if isinstance(error, StoreUnavailable):
        return False  # already retried for the whole patience
    text = f"{type(error).__name__}: {error}".lower()
    return any(marker in text for marker in RETRY_MARKERS)


def with_retries(call, *args, **kwargs):
    return _retried_for(store_patience(), call, *args, **kwargs)


def _retried_for(patience: float, call, *args, **kwargs):
    """``call``, retried on transient errors until ``patience`` seconds have passed (0: tried once)."""
    started, delay = time.monotonic(), FIRST_DELAY
    deadline = started + patience
    while True:
        try:
            return call(*args, **kwargs)
        except Exception as exc:
            if not is_transient(exc):
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreUnavailable.after(tracking_uri(), time.monotonic() - started, exc) from exc
            # jitter: writers must not retry in lock-step; the last sleep ends at the deadline, so a
            # patience is kept, not overrun by up to a whole delay
            time.sleep(min(delay * (1 + random.random()), left))
            delay = min(2 * delay, LONGEST_DELAY)


class RetryingClient:
    """MlflowClient whose every method retries transient store errors."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        attribute = getattr(self._inner, name)
        if not callable(attribute):
            return attribute
        return lambda *args, **kwargs: with_retries(attribute, *args, **kwargs)


@lru_cache(maxsize=4)
def _client_for(uri: str):
    import logging

    from mlflow import MlflowClient

    # MLflow's SQL store logs every database error with a full traceback before raising it; the
    # error reaches us anyway (retried, or named in StoreUnavailable), so the traceback is noise
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    # MLflow draws a "Downloading artifacts" bar for every artifact it fetches (the leaderboard reads
    # confusion matrices): noise in the CLI's output and in notebooks
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow prints "View run ... at: URL" whenever a run on a tracking server ends: links that open on
    # its GenAI pages. The links imagebench prints (ui_route) open the Model-training view instead
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    return RetryingClient(MlflowClient(tracking_uri=uri))


def client():
    # creating the client opens the store (SQLite: a schema check that a held lock blocks): retried too
    return with_retries(_client_for, tracking_uri())


def _server_problem(uri: str, timeout: float) -> Optional[str]:
    """Why the tracking server at ``uri`` does not answer its health check, or None (a file or
    SQLite store always 'answers'; its problems surface as errors of their own). One request, no
    retries: MLflow's own retries of a request to a server that is down take minutes."""
    import urllib.error
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answers (an auth proxy or an older server without /health): MLflow's calls decide
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def check_store_answers(timeout: float = 5.0) -> None:
    """A tracking server that does not answer is named before a sweep creates anything."""
    uri = tracking_uri()
    problem = _server_problem(uri, timeout)
    if problem:
        raise StoreUnavailable(f"MLflow tracking server {uri} does not answer ({problem}): start it (`make server`) "
                               f"or set MLFLOW_TRACKING_URI to your team's server; nothing was run")  # fmt: skip


def check_store_now(timeout: float = 5.0) -> None:
    """Ask the store once, without waiting out an outage: StoreUnavailable at once when it does not
    answer. For a run that has already waited a whole patience for the store (its record went to a
    journal): waiting again would cost another patience for every write it still has."""
    uri = tracking_uri()
    problem = _server_problem(uri, timeout)
    if problem:
        raise StoreUnavailable(f"MLflow store {uri} does not answer ({problem})")
    _retried_for(0.0, lambda: _client_for(uri)._inner.search_experiments(max_results=1))


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


def package_versions(names: list[str]) -> dict[str, str]:
    """Installed versions of those of ``names`` that are installed (for the versions tag, benchmarks)."""
    import importlib.metadata as metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=project_root(), capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def pinned_requirements(names: list[str]) -> list[str]:
    """``name==version`` of those of ``names`` that are installed (a logged model's pip requirements)."""
    return [f"{name}=={version}" for name, version in package_versions(names).items()]


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
        tags={TAG_ROLE: "sweep", TAG_SWEEP: experiment, TAG_GIT_COMMIT: git_commit(), "imagebench.sweep_file": source},
    )
    return run.info.run_id


def process_owner() -> str:
    """``host:pid`` of this process, tagged on runs it drives so a later sweep can tell abandoned runs."""
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_is_alive(owner: str) -> Optional[bool]:
    """True/False for an owner on this host; None when it ran elsewhere (cannot tell from here)."""
    import psutil

    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return psutil.pid_exists(int(pid)) and int(pid) != os.getpid()


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


@contextmanager
def using_store(uri: Optional[str]):
    """Talk to ``uri`` inside the block (``imagebench relog`` writes to the store a journal names)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = before
