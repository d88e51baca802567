"""The leaders' models: logged in MLflow, exported, checked, registered; the other trials' weights deleted.

After a sweep (and on demand: ``imagebench export --experiment X [--model M --framework F]``), each
leaderboard row's run gets, from the weights its trial kept (``trained``):

1. an MLflow model in its framework's flavour (PyTorch as a torch.export program, Keras as a
   TensorFlow SavedModel), with a signature and an input example: the run's Models column;
2. portable files in ``results/<experiment>/models/<framework>-<model>/``, also logged under the
   run's ``exports/``: ``model.onnx`` for both frameworks, plus ``model.keras`` or ``model.pt2``.
   Every one takes float32 0-255 RGB (N, S, S, 3), preprocessing inside, and gives probabilities;
3. checks, written to ``export.json``: each file (and the MLflow model loaded back through
   ``mlflow.pyfunc``) predicts the trial's test images within ``TOLERANCE`` of what the trial
   predicted, and its test accuracy is the one the run logged. A model that fails is not registered;
4. a version in the Model Registry: one registered model per experiment, framework and model
   (``store.registered_model_name``); the overall winner's version gets the alias ``champion``.

Then (whole experiment, every leader published) the weights of every other trial are deleted.
TensorFlow and torch never share a process: each framework's leaders are published by a worker
process (``python -m imagebench.report.publish WORKER-JOB``); this module itself imports neither.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from imagebench.core import metrics, names
from imagebench.trial import trained
from imagebench import store

TOLERANCE = 1e-4  # largest difference in any class probability between an export and its trial
EXPORT_REPORT = "export.json"


class PublishError(LookupError):
    """Nothing to publish as asked: unknown experiment, model or framework (names what exists)."""


@dataclass
class Leader:
    experiment: str
    model: str
    framework: str
    rank: int
    run_id: str
    run_name: str
    folder: str  # the kept model (trained.folder_of)
    out_dir: str  # results/<experiment>/models/<framework>-<model>
    registered_name: str

    @property
    def label(self) -> str:
        return f"{self.framework}/{self.model}"


@dataclass
class Outcome:
    label: str
    run_id: str
    ok: bool
    message: str
    version: Optional[str] = None
    files: dict[str, str] = field(default_factory=dict)


@dataclass
class Summary:
    outcomes: list[Outcome]
    champion: Optional[str] = None  # "name version N"
    pruned: int = 0

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if not outcome.ok]


# --- which leaders (driver) ---------------------------------------------------------------------
def models_dir(experiment: str) -> Path:
    return store.results_dir(experiment) / "models"


def _known_experiments() -> list[str]:
    return sorted(experiment.name for experiment in store.client().search_experiments() if experiment.name != "Default")


def leaders_of(experiment: str) -> list[Leader]:
    """Every leaderboard row of ``experiment`` (rank order) as something to publish."""
    from imagebench.report.leaderboard import LeaderboardError, build

    exports = models_dir(experiment)  # an experiment name that cannot be a folder is refused before anything is read
    if store.client().get_experiment_by_name(experiment) is None:
        known = ", ".join(_known_experiments()) or "none yet"
        raise PublishError(f"no experiment '{experiment}' in {store.tracking_uri()}; experiments there: {known}")
    try:
        board = build(experiment, with_figures=False)
    except LeaderboardError as exc:
        raise PublishError(str(exc)) from None
    leaders = []
    for row in board.leaders.dropna(subset=[metrics.BEST_VAL_ACCURACY.column]).itertuples():
        run_name = store.client().get_run(row.run_id).info.run_name
        for what, name in (("name", run_name), (f"tag {store.TAG_MODEL}", row.model), (f"tag {store.TAG_FRAMEWORK}", row.framework)):
            # anyone who can write to the store can name a run: its names become paths below
            names.safe_name(name, f"MLflow run {row.run_id}: {what}", "Rename the run (or correct its tag) in MLflow, or delete the run")
        leaders.append(Leader(experiment, row.model, row.framework, int(row.rank), row.run_id, run_name,
                              str(trained.folder_of(experiment, run_name)),
                              str(exports / f"{row.framework}-{row.model}"),
                              store.registered_model_name(experiment, row.model, row.framework)))  # fmt: skip
    return leaders


def select(experiment: str, leaders: list[Leader], model: Optional[str], framework: Optional[str]) -> list[Leader]:
    """The leaders asked for; an unknown model or framework names those the leaderboard has."""
    for asked, kind, present in ((model, "model", {leader.model for leader in leaders}),
                                 (framework, "framework", {leader.framework for leader in leaders})):  # fmt: skip
        if asked is not None and asked not in present:
            raise PublishError(f"experiment '{experiment}' has no finished {kind} '{asked}'; its leaderboard has: "
                               f"{', '.join(sorted(present)) or 'nothing finished'}")  # fmt: skip
    return [leader for leader in leaders if model in (None, leader.model) and framework in (None, leader.framework)]


# --- the whole step (driver) --------------------------------------------------------------------
def publish(experiment: str, model: Optional[str] = None, framework: Optional[str] = None, prune: bool = True,
            echo: Callable[[str], None] = print) -> Summary:  # fmt: skip
    """Publish the leaders asked for (all by default) and, when that was the whole experiment and
    every leader made it, delete the other trials' kept weights (``prune``)."""
    every_leader = leaders_of(experiment)
    chosen = select(experiment, every_leader, model, framework)
    echo(f"models: logging, exporting, checking and registering {len(chosen)} leader(s) of '{experiment}' "
         f"(one worker per framework; about 5-30 s each)")  # fmt: skip
    outcomes, ready = [], []
    for leader in chosen:
        if trained.is_complete(Path(leader.folder)):
            ready.append(leader)
        else:
            outcomes.append(Outcome(leader.label, leader.run_id, False, _weights_gone(leader)))
            echo(f"  {leader.label}: {outcomes[-1].message}")
    for name in sorted({leader.framework for leader in ready}):
        outcomes += _run_worker(name, [leader for leader in ready if leader.framework == name], echo)
    summary = Summary(outcomes)
    try:
        summary.champion = _crown_champion(experiment, every_leader)
    except Exception as exc:  # a registry that refuses: what was published stays published
        summary.outcomes.append(Outcome("alias", "", False, f"setting the alias '{store.CHAMPION_ALIAS}' failed: {exc}"))
    if summary.champion:
        echo(f"  alias '{store.CHAMPION_ALIAS}': {summary.champion}")
    if prune and model is None and framework is None and not summary.failed and every_leader:
        summary.pruned = len(trained.prune(experiment, {Path(leader.folder) for leader in every_leader}))
        echo(f"  deleted the kept weights of {summary.pruned} trial(s) that lead nothing")
    elif prune and summary.failed:
        echo("  kept every trial's weights: a leader was not published (run `imagebench export` again once fixed)")
    return summary


def _weights_gone(leader: Leader) -> str:
    return (f"not exported: its weights are gone ({leader.folder} is missing or incomplete: deleted, or trained by an "
            f"imagebench that did not keep weights); run {leader.run_name} again with --rerun to publish it")  # fmt: skip


def _run_worker(framework: str, leaders: list[Leader], echo: Callable[[str], None]) -> list[Outcome]:
    """Publish one framework's leaders in a process of their own; a worker that dies fails only them."""
    with tempfile.TemporaryDirectory(prefix="imagebench-publish-") as scratch:
        job, result = Path(scratch) / "job.json", Path(scratch) / "result.json"
        job.write_text(json.dumps([asdict(leader) for leader in leaders]))
        # stdout: the worker's one line per leader, shown as they come; stderr: its libraries' warnings,
        # shown only if the worker dies
        process = subprocess.Popen([sys.executable, "-m", "imagebench.report.publish", str(job), str(result)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        errors = _drain(process.stderr)
        for line in process.stdout:
            echo(line.rstrip("\n"))
        process.wait()
        if result.is_file():
            return [Outcome(**item) for item in json.loads(result.read_text())]
    tail = "\n".join(errors()[-15:])
    return [Outcome(leader.label, leader.run_id, False, f"the {framework} worker died (exit {process.returncode}):\n{tail}")
            for leader in leaders]  # fmt: skip


def _drain(stream) -> Callable[[], list[str]]:
    """Read ``stream`` on a thread (a full stderr pipe would stall the worker); returns its lines so far."""
    import threading

    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(stream), daemon=True).start()
    return lambda: [line.rstrip("\n") for line in lines]


def _version_of(name: str, run_id: str):
    client = store.client()
    try:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except Exception:  # no such registered model yet
        return None
    return max(versions, key=lambda version: int(version.version)) if versions else None


def _crown_champion(experiment: str, leaders: list[Leader]) -> Optional[str]:
    """The alias goes to the version of the overall winner (rank 1), wherever it was published from;
    an earlier champion of this experiment that no longer wins loses it."""
    client = store.client()
    winner = next((leader for leader in leaders if leader.rank == 1), None)
    version = _version_of(winner.registered_name, winner.run_id) if winner else None
    for registered in client.search_registered_models(f"tags.`{store.TAG_REGISTERED_EXPERIMENT}` = '{experiment}'"):
        if store.CHAMPION_ALIAS in (registered.aliases or {}) and (version is None or registered.name != version.name):
            client.delete_registered_model_alias(registered.name, store.CHAMPION_ALIAS)
    if version is None:
        return None
    client.set_registered_model_alias(version.name, store.CHAMPION_ALIAS, version.version)
    return f"{version.name} version {version.version} ({winner.label}, run {winner.run_id})"


# --- one framework's leaders (worker process) ---------------------------------------------------
@dataclass
class Check:
    name: str
    max_difference: float
    test_accuracy: float
    ok: bool


def _check(name: str, predict, pixels: np.ndarray, labels: np.ndarray, expected: np.ndarray, logged_accuracy: float) -> Check:
    predicted = np.concatenate([np.asarray(predict(pixels[start:start + 256])) for start in range(0, len(pixels), 256)])
    difference = float(np.abs(predicted - expected).max())
    accuracy = float((predicted.argmax(axis=1) == labels).mean())
    return Check(name, difference, accuracy, difference <= TOLERANCE and abs(accuracy - logged_accuracy) < 1e-9)


def onnx_predictor(path: Path):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda pixels: session.run(None, {name: pixels})[0]


def _pyfunc_predictor(model_uri: str):
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_uri)
    return lambda pixels: model.predict(pixels)


def _logged_model_uri(run_id: str) -> Optional[str]:
    """The MLflow model an earlier publication logged for this run (publishing again logs none), or None."""
    from mlflow.entities import LoggedModelStatus

    client = store.client()
    for output in client.get_run(run_id).outputs.model_outputs:
        logged = client.get_logged_model(output.model_id)
        if logged.name == store.LOGGED_MODEL_NAME and logged.status == LoggedModelStatus.READY:
            return logged.model_uri
    return None


def _log_model(exporter, model, run_id: str, signature, example: np.ndarray) -> str:
    import mlflow

    # MLflow files a model logged for a run that is not the active one under the Default experiment
    # (MLflow 3.17): point it at the run's own, where the experiment's Models tab shows it
    mlflow.set_experiment(experiment_id=store.client().get_run(run_id).info.experiment_id)
    return exporter.log_mlflow_model(model, run_id, signature, example)


def _publish_one(exporter, leader: Leader) -> Outcome:
    """Restore, log, export, check, register one leader; the outcome says which step failed and why."""
    from mlflow.models import infer_signature

    from imagebench.data.load import load_trial_data
    from imagebench.core.params import make_params

    out_dir = Path(leader.out_dir)
    step = "restoring the model and its test images"
    try:
        kept = trained.load(Path(leader.folder))
        test = load_trial_data(make_params(kept.params)).test
        pixels, expected = test.images.astype(np.float32), kept.probabilities
        logged_accuracy = store.client().get_run(leader.run_id).data.metrics[metrics.TEST_ACCURACY.key]
        model = exporter.load_trained(kept.params, len(kept.class_names), Path(leader.folder))
        example = pixels[:2]
        out_dir.mkdir(parents=True, exist_ok=True)
        step = "logging the MLflow model"
        model_uri = _logged_model_uri(leader.run_id) or _log_model(exporter, model, leader.run_id, infer_signature(example, expected[:2]), example)
        step = "exporting"
        files = exporter.export_files(model, example, out_dir)
        step = "checking the exports"
        native = {kind: exporter.native_predictor(path) for kind, path in files.items() if kind != "onnx"}
        predictors = {"restored weights": exporter.predictor(model), **native, "onnx": onnx_predictor(files["onnx"]),
                      "mlflow pyfunc": _pyfunc_predictor(model_uri)}  # fmt: skip
        checks = [_check(name, predict, pixels, test.labels, expected, logged_accuracy) for name, predict in predictors.items()]
        report = {"run_id": leader.run_id, "registered_model": leader.registered_name, "model_uri": model_uri,
                  "input": "float32 (N, S, S, 3) RGB 0-255", "output": "class probabilities", "class_names": kept.class_names,
                  "tolerance": TOLERANCE, "logged_test_accuracy": logged_accuracy, "checks": [asdict(check) for check in checks]}  # fmt: skip
        (out_dir / EXPORT_REPORT).write_text(json.dumps(report, indent=1))
        for path in [*files.values(), out_dir / EXPORT_REPORT]:
            store.client().log_artifact(leader.run_id, str(path), store.ARTIFACT_EXPORTS)
        failed = [check for check in checks if not check.ok]
        shown = {kind: str(path) for kind, path in files.items()}
        if failed:
            return Outcome(leader.label, leader.run_id, False, "not registered: " + "; ".join(
                f"{check.name} differs from the trial by {check.max_difference:.2e} (accuracy {check.test_accuracy:.4f} vs "
                f"logged {logged_accuracy:.4f})" for check in failed), files=shown)  # fmt: skip
        step = "registering"
        version = _register(leader, model_uri, logged_accuracy)
    except Exception as exc:  # one leader's failure is reported; the others go on
        return Outcome(leader.label, leader.run_id, False, f"{step} failed ({store.tracking_uri()}): {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else ''}; the run and every trial's weights are kept")  # fmt: skip
    worst = max(check.max_difference for check in checks)
    return Outcome(leader.label, leader.run_id, True, f"{leader.registered_name} version {version}; exports in {out_dir} "
                   f"(max difference from the trial {worst:.1e}, test accuracy {logged_accuracy:.4f} as logged)",
                   version=version, files=shown)  # fmt: skip


def _register(leader: Leader, model_uri: str, test_accuracy: float) -> str:
    import mlflow

    client = store.client()
    version = _version_of(leader.registered_name, leader.run_id)
    if version is None:  # publishing the same run again adds no version
        version = mlflow.register_model(model_uri, leader.registered_name, await_registration_for=0)
    client.set_registered_model_tag(leader.registered_name, store.TAG_REGISTERED_EXPERIMENT, leader.experiment)
    client.update_registered_model(leader.registered_name, f"Leader of {leader.framework}/{leader.model} in sweep "
                                   f"'{leader.experiment}' (imagebench): validation-best configuration.")  # fmt: skip
    client.update_model_version(leader.registered_name, version.version, f"run {leader.run_id} ({leader.run_name}), "
                                f"rank {leader.rank}, test accuracy {test_accuracy:.4f}")  # fmt: skip
    return str(version.version)


def worker_main(job_file: str, result_file: str) -> int:
    leaders = [Leader(**item) for item in json.loads(Path(job_file).read_text())]
    from imagebench.backends import get_exporter

    exporter = get_exporter(leaders[0].framework)
    outcomes = []
    for leader in leaders:
        started = time.perf_counter()
        outcomes.append(_publish_one(exporter, leader))
        print(f"  {leader.label} (rank {leader.rank}): {outcomes[-1].message} [{time.perf_counter() - started:.0f}s]", flush=True)
    Path(result_file).write_text(json.dumps([asdict(outcome) for outcome in outcomes]))
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(*sys.argv[1:3]))
