"""The leaders' models after a sweep: logged in MLflow, exported (ONNX, .keras, .pt2), registered with
a champion, checked against the trial by loading them the way a user would; bad input; a refusing store."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import run_imagebench

from imagebench.report import publish
from imagebench.trial import trained
from imagebench import store
from imagebench.data.load import load_trial_data
from imagebench.core.params import make_params

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
PYFUNC_CHECK = textwrap.dedent("""
    import json, sys
    import mlflow.pyfunc, numpy as np
    model = mlflow.pyfunc.load_model(sys.argv[1])
    pixels = np.load(sys.argv[2])
    print(json.dumps(np.asarray(model.predict(pixels)).tolist()))
""")


def _sweep_file(project: Path, name: str, frameworks: str, rates: str) -> Path:
    path = project / "params" / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""
        experiment: {name}
        base: {{dataset: digits, image_size: 32, epochs: 2, batch_size: 64, max_per_class: 30, weights: none}}
        matrix: {{framework: [{frameworks}], model: [cnn], learning_rate: [{rates}]}}
    """))
    return path


def _test_pixels_and_labels(kept: trained.KeptModel) -> tuple[np.ndarray, np.ndarray]:
    test = load_trial_data(make_params(kept.params)).test
    return test.images.astype(np.float32), test.labels


def _kept_folders(project: Path, experiment: str) -> list[Path]:
    return sorted((project / "results" / experiment / "runs").glob(f"*.record/{trained.FOLDER}"))


def _what_is_published(project: Path, experiment: str, leaders: list[publish.Leader]) -> dict[str, dict]:
    """Every trace a publication leaves: registered versions, logged models (in any experiment), each
    run's model outputs, the files under results/<experiment>/models/ and each run's exports/."""
    client = store.client()
    logged = client.search_logged_models([found.experiment_id for found in client.search_experiments()])  # wherever MLflow filed them
    exports = project / "results" / experiment / "models"
    return {
        "versions": {leader.registered_name: sorted(version.version for version in client.search_model_versions(f"name = '{leader.registered_name}'"))
                     for leader in leaders},
        "logged models": {leader.run_id: sorted(model.model_id for model in logged if model.source_run_id == leader.run_id) for leader in leaders},
        "run model outputs": {leader.run_id: sorted(output.model_id for output in client.get_run(leader.run_id).outputs.model_outputs)
                              for leader in leaders},
        "export files": {"all": sorted(str(path.relative_to(exports)) for path in exports.rglob("*") if path.is_file())},
        "exports artifacts": {leader.run_id: sorted(item.path for item in client.list_artifacts(leader.run_id, store.ARTIFACT_EXPORTS))
                              for leader in leaders},
    }  # fmt: skip


def test_a_sweep_logs_exports_checks_and_registers_its_leaders(project, tmp_path):
    done = run_imagebench("sweep", str(_sweep_file(project, "pub", "keras, torch", "0.01, 0.001")), "--quiet", cwd=project)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "alias 'champion'" in done.stdout and "deleted the kept weights of 2 trial(s)" in done.stdout

    client = store.client()
    leaders = publish.leaders_of("pub")
    assert sorted(leader.label for leader in leaders) == ["keras/cnn", "torch/cnn"]
    assert len(_kept_folders(project, "pub")) == 2  # only the leaders' weights are left
    for leader in leaders:
        run = client.get_run(leader.run_id)
        assert len(run.outputs.model_outputs) == 1  # the run's Models column
        logged = client.get_logged_model(run.outputs.model_outputs[0].model_id)
        assert logged.source_run_id == leader.run_id and logged.name == store.LOGGED_MODEL_NAME
        assert logged.experiment_id == run.info.experiment_id  # the experiment's Models tab, not Default's
        versions = client.search_model_versions(f"name = '{leader.registered_name}'")
        assert [(str(version.version), version.run_id) for version in versions] == [("1", leader.run_id)]
        assert client.get_registered_model(leader.registered_name).tags[store.TAG_REGISTERED_EXPERIMENT] == "pub"
        native = {"keras": "model.keras", "torch": "model.pt2"}[leader.framework]
        exported = {item.path for item in client.list_artifacts(leader.run_id, store.ARTIFACT_EXPORTS)}
        assert exported == {f"{store.ARTIFACT_EXPORTS}/{name}" for name in ("model.onnx", native, publish.EXPORT_REPORT)}
        report = json.loads((Path(leader.out_dir) / publish.EXPORT_REPORT).read_text())
        assert {check["name"] for check in report["checks"]} == {"restored weights", "onnx", "mlflow pyfunc", native.split(".")[1]}

        # loaded as a user would: onnxruntime and mlflow.pyfunc (own process: TF and torch never share one)
        kept = trained.load(Path(leader.folder))
        pixels, labels = _test_pixels_and_labels(kept)
        logged_accuracy = run.data.metrics["test/accuracy"]
        np.save(tmp_path / "pixels.npy", pixels)
        loaded = subprocess.run([sys.executable, "-c", PYFUNC_CHECK, f"models:/{leader.registered_name}/1", str(tmp_path / "pixels.npy")],
                                capture_output=True, text=True, timeout=300)  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr[-3000:]
        predictions = {"onnx": publish.onnx_predictor(Path(leader.out_dir) / "model.onnx")(pixels),
                       "pyfunc": np.array(json.loads(loaded.stdout.splitlines()[-1]))}  # fmt: skip
        for name, predicted in predictions.items():
            assert np.abs(predicted - kept.probabilities).max() <= 1e-4, name
            assert (predicted.argmax(axis=1) == labels).mean() == pytest.approx(logged_accuracy, abs=1e-12), name

    winner = next(leader for leader in leaders if leader.rank == 1)
    assert client.get_model_version_by_alias(winner.registered_name, store.CHAMPION_ALIAS).run_id == winner.run_id

    # on demand again: the same versions, logged models and export files, nothing duplicated
    published = _what_is_published(project, "pub", leaders)
    again = run_imagebench("export", "--experiment", "pub", cwd=project)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _what_is_published(project, "pub", leaders) == published
    assert all(len(versions) == 1 for versions in published["versions"].values())
    assert all(len(models) == 1 for models in published["logged models"].values()) and published["export files"]["all"]

    # bad input names what exists
    for args, expected in ((["--experiment", "nope"], "experiments there: pub"),
                           (["--experiment", "pub", "--model", "vgg16"], "has no finished model 'vgg16'; its leaderboard has: cnn"),
                           (["--experiment", "pub", "--framework", "jax"], "its leaderboard has: keras, torch")):  # fmt: skip
        refused = run_imagebench("export", *args, cwd=project)
        assert refused.returncode == 2 and expected in refused.stderr, refused.stderr

    # a leader whose weights are gone says so; the others are still exported
    keras_leader = next(leader for leader in leaders if leader.framework == "keras")
    for path in Path(keras_leader.folder).iterdir():
        path.unlink()
    partial = run_imagebench("export", "--experiment", "pub", cwd=project)
    assert partial.returncode == 1
    assert f"keras/cnn (run {keras_leader.run_id}): not exported: its weights are gone" in partial.stderr
    assert "torch/cnn (rank" in partial.stdout and "version 1" in partial.stdout


def test_a_store_that_refuses_writes_fails_with_the_reason_and_loses_nothing(project):
    done = run_imagebench("sweep", str(_sweep_file(project, "ro", "torch", "0.01, 0.001")), "--quiet", "--no-models", cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    kept = _kept_folders(project, "ro")
    assert len(kept) == 2  # --no-models: every trial's weights stay for a later export

    read_only = f"sqlite:///file:{project / 'mlflow.db'}?mode=ro&uri=true"
    refused = run_imagebench("export", "--experiment", "ro", cwd=project, env={**os.environ, "MLFLOW_TRACKING_URI": read_only})
    assert refused.returncode == 1
    assert "logging the MLflow model failed" in refused.stderr and "readonly database" in refused.stderr
    assert _kept_folders(project, "ro") == kept and all(trained.is_complete(folder) for folder in kept)
    assert all(run.info.status == "FINISHED" for run in store.search_trial_runs("ro"))

    # once the store takes writes, the leaderboard notebook publishes (keeping every trial's weights)
    accepted = subprocess.run([str(BIN / "papermill"), "notebooks/leaderboard.ipynb", "board.ipynb", "-p", "experiment", "ro",
                               "-p", "write_files", "False", "-p", "publish_models", "True"],
                              cwd=project, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr[-3000:]
    assert "ro.torch.cnn version 1" in (project / "board.ipynb").read_text()
    assert len(_kept_folders(project, "ro")) == 2
    leader = publish.leaders_of("ro")[0]
    assert store.client().get_model_version_by_alias(leader.registered_name, store.CHAMPION_ALIAS).run_id == leader.run_id
