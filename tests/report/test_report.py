"""Publishing the leaderboard into the sweep's parent run (a real MLflow store): the table, files,
description and leader tags are replaced on every rebuild, never duplicated."""

import json
from pathlib import Path

from imagebench.report import leaderboard
from imagebench.report import parent_run
from imagebench import store
from helpers import recorded_trial


def _table_rows(run_id: str, folder: Path) -> list:
    path = store.client().download_artifacts(run_id, parent_run.TABLE_FILE, str(folder))
    return json.loads(Path(path).read_text())["data"]


def test_a_rebuilt_report_replaces_the_table_and_moves_the_leader_tags(project, tmp_path):
    parent = store.start_sweep_run("rep", "params/rep.yaml")
    first = recorded_trial("rep", "cnn", "torch", val_acc=0.8, val_loss=0.3, test_acc=0.7, parent=parent)
    recorded_trial("rep", "resnet50", "torch", val_acc=0.6, val_loss=0.5, test_acc=0.6, parent=parent)
    board = leaderboard.build("rep", with_figures=False)
    written = leaderboard.write(board, tmp_path / "out")
    assert parent_run.publish(board, written) == parent

    run = store.client().get_run(parent)
    note = run.data.tags[store.TAG_NOTE]
    assert "2 finished, 0 failed" in note and "| cnn " in note and "Reproduce: `imagebench sweep" in note
    assert run.data.metrics["leader/val_accuracy"] == 0.8 and run.data.metrics["leader/test_accuracy"] == 0.7
    artifacts = {item.path for item in store.client().list_artifacts(parent, parent_run.ARTIFACT_DIR)}
    assert {f"{parent_run.ARTIFACT_DIR}/leaderboard.html", f"{parent_run.ARTIFACT_DIR}/leaderboard.csv", parent_run.TABLE_FILE} <= artifacts
    assert {"path": parent_run.TABLE_FILE, "type": "table"} in json.loads(run.data.tags[parent_run.LOGGED_ARTIFACTS_TAG])
    assert len(_table_rows(parent, tmp_path / "a")) == 2
    assert store.client().get_run(first).data.tags[store.TAG_RANK] == "1"

    better = recorded_trial("rep", "cnn", "torch", val_acc=0.95, val_loss=0.1, test_acc=0.9, parent=parent)  # a new cnn leader
    board = leaderboard.build("rep", with_figures=False)
    parent_run.publish(board, leaderboard.write(board, tmp_path / "out"))
    assert len(_table_rows(parent, tmp_path / "b")) == 2  # replaced, not appended
    leaders = {run.info.run_id: run.data.tags[store.TAG_RANK] for run in store.search_trial_runs("rep", parent_run.LEADER_SEARCH)}
    assert leaders[better] == "1" and first not in leaders and len(leaders) == 2
    assert json.loads(store.client().get_run(parent).data.tags[parent_run.LOGGED_ARTIFACTS_TAG]).count(
        {"path": parent_run.TABLE_FILE, "type": "table"}) == 1


def test_trials_log_their_dataset_as_an_mlflow_input(project):
    from imagebench.store import record

    run_id = store.create_trial_run("data", "001-trial", {}, None)
    record.RunRecorder(run_id, project / "rec").log_dataset("flowers", "folder-0123456789abcdef", "/data/flowers",
                                                            {"splits": {"train": 8, "val": 2, "test": 2}})
    (found,) = store.client().get_run(run_id).inputs.dataset_inputs
    assert (found.dataset.name, found.dataset.digest) == ("flowers", "folder-0123456789abcdef")
    assert json.loads(found.dataset.source) == {"uri": "/data/flowers"}
    assert json.loads(found.dataset.profile)["splits"]["train"] == 8
