"""End to end through papermill kernels: the sweep, its MLflow record, failures, plain papermill."""

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from helpers import assert_documented_record
from PIL import Image

from imagebench import store
from imagebench.core import metrics

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _run(args, cwd, **kwargs):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs)


def _unsplittable_dataset(root: Path) -> Path:
    """A valid layout (two classes with images) that cannot be split: one image per class cannot
    make train, validation and test."""
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / name / "0.png")
    return root


def _fail_in_notebook(project: Path, when: str, message: str) -> None:
    """This test project's train.ipynb raises ``message`` after its parameters cell when ``when`` holds."""
    path = project / "notebooks" / "train.ipynb"
    notebook = json.loads(path.read_text())
    position = next(i for i, cell in enumerate(notebook["cells"]) if "parameters" in cell["metadata"].get("tags", [])) + 2
    source = f"if {when}:\n    raise RuntimeError({message!r})\n"
    notebook["cells"].insert(position, {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": source})
    path.write_text(json.dumps(notebook))


def test_sweep_runs_trials_in_papermill_and_survives_a_failing_trial(project):
    _fail_in_notebook(project, "params.learning_rate == 0.0123", "this trial fails on purpose")
    sweep_file = project / "params" / "e2e.yaml"
    sweep_file.write_text(textwrap.dedent("""
        experiment: e2e
        base: {dataset: digits, image_size: 32, epochs: 2, batch_size: 64, max_per_class: 12,
                val_fraction: 0.25, test_fraction: 0.25}
        matrix: {framework: [keras, torch], model: [cnn]}
        include:
          - {framework: keras, model: cnn, learning_rate: 0.0123}
    """))
    done = _run([str(BIN / "imagebench"), "sweep", str(sweep_file), "--no-models"], cwd=project)  # models: test_publish
    assert done.returncode == 1, done.stderr[-3000:]  # one failed trial: the exit code says so
    assert "2 finished, 1 failed of 3 trials" in done.stdout
    assert "this trial fails on purpose" in done.stdout  # the closing summary names the reason
    assert "data digits at 32 px: 10 classes" in done.stdout  # checked once before the first trial

    client = store.client()
    parent = store.find_sweep_run("e2e")
    children = client.search_runs([store.experiment_id("e2e")], filter_string=f"tags.`{store.TAG_ROLE}` = 'trial'")
    assert len(children) == 3 and all(run.data.tags[store.TAG_PARENT] == parent for run in children)
    by_status = {}
    for run in children:
        by_status.setdefault(run.info.status, []).append(run)
        notebooks = [item.path for item in client.list_artifacts(run.info.run_id, store.ARTIFACT_NOTEBOOK_DIR)]
        assert notebooks == [f"{store.ARTIFACT_NOTEBOOK_DIR}/{run.data.tags[store.TAG_TRIAL]}.ipynb"]
    assert len(by_status["FINISHED"]) == 2 and len(by_status["FAILED"]) == 1
    assert "this trial fails on purpose" in by_status["FAILED"][0].data.tags[store.TAG_ERROR]
    for run in by_status["FINISHED"]:
        assert_documented_record(run.info.run_id, num_classes=10)

    runs_dir = project / "results" / "e2e" / "runs"
    assert len(list(runs_dir.glob("*.ipynb"))) == 3
    executed = json.loads(next(runs_dir.glob("*-torch-cnn-*.ipynb")).read_text())
    assert any("injected-parameters" in cell["metadata"].get("tags", []) for cell in executed["cells"])
    # the notebook shows the figures the run keeps (drawn once): the same PNG bytes
    shown = [base64.b64decode(output["data"]["image/png"]) for cell in executed["cells"]
             for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]  # fmt: skip
    torch_run = next(run for run in by_status["FINISHED"] if run.data.params["framework"] == "torch")
    logged = [Path(client.download_artifacts(torch_run.info.run_id, name, str(project))).read_bytes()
              for name in (store.ARTIFACT_CURVES_PNG, store.ARTIFACT_CONFUSION_PNG)]  # fmt: skip
    assert shown == logged
    assert (project / "results" / "e2e" / "leaderboard.md").exists()
    # the cost ledger: in the trials view (a column per part, their sum, one stacked bar per trial)
    # and summed in the parent run, the failed trial's time included
    trials = pd.read_csv(project / "results" / "e2e" / "trials.csv")
    parts = [metric.key.split("/", 1)[1] for metric in metrics.COSTS]
    finished = trials[trials["status"].eq("FINISHED")]
    assert len(finished) == 2 and finished[parts].notna().all().all() and (finished[parts] >= 0).all().all()
    assert np.allclose(finished[parts].sum(axis=1), finished["fixed_seconds"])
    assert (project / "results" / "e2e" / "trial_costs.png").exists()
    assert "![trial_costs](trial_costs.png)" in (project / "results" / "e2e" / "leaderboard.md").read_text()
    summed = client.get_run(parent).data.metrics
    for metric in (*metrics.COSTS, metrics.TRAIN_SECONDS):
        assert summed[metric.key] == pytest.approx(sum(run.data.metrics.get(metric.key, 0.0) for run in children), rel=1e-6), metric.key
    assert "epoch 1/2" in next(runs_dir.glob("*-torch-cnn-*.log")).read_text()

    # the leaderboard notebook builds the same board from MLflow
    board = _run([str(BIN / "papermill"), "notebooks/leaderboard.ipynb", "board.ipynb", "-p", "experiment", "e2e",
                  "-p", "write_files", "False"], cwd=project)
    assert board.returncode == 0, board.stderr[-3000:]
    assert "winner_confusion_matrix" not in board.stderr and "image/png" in (project / "board.ipynb").read_text()


def test_explore_notebook_executes(project):
    done = _run([str(BIN / "papermill"), "notebooks/explore.ipynb", "explore.ipynb", "-p", "image_size", "32"], cwd=project)
    assert done.returncode == 0, done.stderr[-3000:]
    text = (project / "explore.ipynb").read_text()
    assert "10 classes" in text and "image/png" in text


def test_dry_run_prints_the_plan_and_runs_nothing(project):
    done = _run([str(BIN / "imagebench"), "sweep", "params/demo.yaml", "--dry-run", "--set", "epochs=1"], cwd=project)
    assert done.returncode == 0 and "16 trials in experiment 'demo'" in done.stdout
    assert not (project / "results" / "demo").exists()


def test_bad_sweep_file_fails_fast_with_the_key(project):
    (project / "params" / "typo.yaml").write_text("matrix: {model: [cnn]}\nbase: {batch_sise: 8}\n")
    done = _run([str(BIN / "imagebench"), "sweep", "params/typo.yaml"], cwd=project)
    assert done.returncode == 2 and "did you mean 'batch_size'" in done.stderr


def test_papermill_typo_parameter_is_an_error_not_a_warning(project):
    done = _run([str(BIN / "papermill"), "notebooks/train.ipynb", "out.ipynb", "-p", "learning_rat", "0.1",
                 "-p", "epochs", "1"], cwd=project)
    assert done.returncode != 0
    assert "did you mean 'learning_rate'" in done.stderr + done.stdout + (project / "out.ipynb").read_text()


def _tree_digest(root: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}|{stat.st_mtime_ns}|{stat.st_mode}".encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _folder_sweep(project: Path, dataset: Path, name: str) -> Path:
    sweep_file = project / "params" / f"{name}.yaml"
    sweep_file.write_text(f"experiment: {name}\nbase: {{dataset: '{dataset}', image_size: 32, epochs: 1, batch_size: 16, "
                          "val_fraction: 0.25, test_fraction: 0.25, framework: torch, model: cnn}\n")
    return sweep_file


def test_a_sweep_never_writes_to_the_users_dataset(project):
    data = project / "user_data"
    for index, name in enumerate(("cat", "dog", "사과")):
        (data / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (24, 24), (40 * index, 20 * i, 90)).save(data / name / f"{i}.jpg")
    (data / ".DS_Store").write_bytes(b"\0")
    before = _tree_digest(data)
    done = _run([str(BIN / "imagebench"), "sweep", str(_folder_sweep(project, data, "readonly")), "--no-leaderboard"], cwd=project)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert _tree_digest(data) == before  # contents, names, modification times and modes


def test_a_bad_dataset_layout_stops_the_sweep_before_its_first_trial(project):
    data = project / "presplit"
    for split, classes in (("train", ("cat", "dog", "fox")), ("val", ("cat", "dog")), ("test", ("cat", "dog", "fox"))):
        for name in classes:
            (data / split / name).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (8, 8)).save(data / split / name / f"{i}.png")
    done = _run([str(BIN / "imagebench"), "sweep", str(_folder_sweep(project, data, "layout"))], cwd=project)
    assert done.returncode == 2 and "val: classes ['fox']" in done.stderr and "have no images here" in done.stderr
    assert store.client().get_experiment_by_name("layout") is None  # nothing was started


def test_data_problems_stop_the_sweep_before_any_run_and_unreadable_files_are_reported_once(project):
    bad = _unsplittable_dataset(project / "tiny_data")
    done = _run([str(BIN / "imagebench"), "sweep", str(_folder_sweep(project, bad, "unsplittable"))], cwd=project)
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert str(bad) in done.stderr and "'a' has 1 image(s)" in done.stderr
    assert store.client().get_experiment_by_name("unsplittable") is None  # nothing was started

    data = project / "photos"
    for index, name in enumerate(("cat", "dog")):
        (data / name).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (24, 24), (90 * index, 20 * i, 90)).save(data / name / f"{i}.jpg")
    (data / "dog" / "cut.jpg").write_bytes((data / "dog" / "0.jpg").read_bytes()[:60])  # truncated upload
    done = _run([str(BIN / "imagebench"), "sweep", str(_folder_sweep(project, data, "photos")), "--no-leaderboard"], cwd=project)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("1 unreadable file(s) skipped") == 1 and "cut.jpg" in done.stdout
    run = store.search_trial_runs("photos")[0]
    assert run.data.metrics["data/skipped_files"] == 1  # and the trial's record says so too


def test_a_tracking_server_that_does_not_answer_stops_the_sweep_before_anything_runs(project):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    done = _run([str(BIN / "imagebench"), "sweep", "params/demo.yaml", "--set", "epochs=1"], cwd=project, env=env)
    assert done.returncode == 3, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"MLflow tracking server {uri} does not answer" in done.stderr and "make server" in done.stderr
    assert "Traceback" not in done.stderr and not (project / "results" / "demo" / "runs").exists()
