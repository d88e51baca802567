"""The README and the docs are the acceptance test: every command block a user is told to type is run
here (or by the test its marker names) as the page writes it, and its documented outcome is asserted.

Where a block's own example would train for minutes, the README says next to it what the tests
add (a tiny dataset, `--models cnn --frameworks torch --set image_size=32`, `-p epochs 1`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from helpers import run_shell
from readme_blocks import NOT_RUN, all_blocks, block

from imagebench.store import record
from imagebench import store

TESTS = Path(__file__).resolve().parent
# what the tests add to each `imagebench sweep params/flowers.yaml` line of the README (said there):
# one small trial, and no publishing after the sweep (the export block's lines publish; test_publish
# proves the publishing a sweep does by itself)
SMALL_SWEEP = " --models cnn --frameworks torch --set image_size=32"
NO_MODELS = " --no-models"
FLOWER_CLASSES = {"daisy": (230, 230, 60), "rose": (200, 30, 50), "tulip": (150, 60, 200)}




def _ok(command: str, cwd: Path) -> str:
    done = run_shell(command, cwd)
    assert done.returncode == 0, f"README line failed: {command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _test_sources() -> str:
    return "\n".join(path.read_text() for path in TESTS.rglob("test_*.py"))


def test_every_command_block_is_run_by_a_test_or_says_why_not():
    """README.md and every docs page: each block marked, each ID run by a test, no ID twice."""
    found = all_blocks()
    assert len(found) >= 8, "the command blocks of README.md and docs/ were not found"
    unmarked = [b.where for b in found if not b.marker]
    assert not unmarked, f"blocks at {unmarked} carry no <!-- readme: ID --> or <!-- readme: not-run: REASON -->"
    excused = [b for b in found if b.marker.startswith(NOT_RUN)]
    assert all(len(b.marker) > len(NOT_RUN) + 10 for b in excused), "a not-run marker must give its reason"
    sources = _test_sources()
    unused = [f"{b.marker} ({b.where})" for b in found if b.runnable and f'block("{b.marker}")' not in sources]
    assert not unused, f"command blocks no test runs: {unused}"
    identifiers = [b.marker for b in found if b.runnable]
    twice = sorted({f"{b.marker} ({b.where})" for b in found if b.runnable and identifiers.count(b.marker) > 1})
    assert not twice, f"blocks sharing one ID (IDs are unique across README.md and docs/): {twice}"


def _flowers(root: Path, per_class: int = 15) -> Path:
    """A folder of class folders as the README draws it: one root, split for you; colours per class
    with noise, so the model has something to learn at 32 px."""
    rng = np.random.default_rng(0)
    for name, colour in FLOWER_CLASSES.items():
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index}.png")
    return root


def _readme_yaml(project: Path, dataset: Path) -> Path:
    """params/flowers.yaml exactly as the page of the own-images block prints it, pointed at the test's folder."""
    text = block("own-images").page.read_text()
    start = text.index("```yaml\n# params/flowers.yaml")
    body = text[start:].split("\n", 1)[1].split("```", 1)[0]
    path = project / "params" / "flowers.yaml"
    path.write_text(body.replace("/data/flowers", str(dataset)))
    return path


def _small(line: str) -> str:
    if not line.startswith("imagebench sweep params/flowers.yaml") or "--dry-run" in line:
        return line
    return line + SMALL_SWEEP + ("" if NO_MODELS in line else NO_MODELS)


def _journal_a_run(project: Path, name: str) -> str:
    """A run of experiment flowers whose record went to a journal (the store was down): what
    `imagebench sweep`/`relog` must replay."""
    run_id = store.create_trial_run("flowers", name, {}, None)
    down = store.StoreUnavailable("store down (made by the test)")
    recorder = record.RunRecorder(run_id, project / "results" / "flowers" / "runs" / f"{name}.record", down)
    recorder.log_batch(metrics={"val/accuracy": 0.5}, params={"learning_rate": 0.001}, step=1)
    recorder.end("FINISHED")
    assert recorder.journal.is_file() and store.run_status(run_id) == "RUNNING"
    return run_id


def _replayed(run_id: str) -> bool:
    run = store.client().get_run(run_id)
    return run.info.status == "FINISHED" and run.data.metrics.get("val/accuracy") == 0.5


@pytest.mark.slow
def test_readme_own_images_resume_relog_and_export(project, tmp_path):
    """A new user's path with their own folder: check the data, plan, run, rebuild the leaderboard,
    resume (journals replayed), relog, export the leaders."""
    dataset = _flowers(tmp_path / "flowers")
    _readme_yaml(project, dataset)
    check, as_json, plan, sweep, board = [_small(line) for line in block("own-images").commands(**{"/data/flowers": str(dataset)})]

    assert re.search(r"3 classes", _ok(check, project))
    summary = json.loads(_ok(as_json, project))
    assert sorted(summary["images_per_class"]) == sorted(FLOWER_CLASSES) and summary["problems"] == []
    assert "11 trials in experiment 'flowers'" in _ok(plan, project)  # 2 x 3 x 2 - 2 excluded + 1 included
    assert not (project / "results" / "flowers").exists()  # a dry run writes nothing
    out = _ok(sweep, project)
    assert "1 finished, 0 failed of 1 trials run" in out  # the include entry (torch vgg16) is not a cnn
    (project / "results" / "flowers" / "leaderboard.md").unlink()
    _ok(board, project)
    assert "torch" in (project / "results" / "flowers" / "leaderboard.md").read_text()

    resume, relog_all, relog_into = block("resume-relog").commands(URI=store.tracking_uri())
    for number, line in enumerate((resume, relog_all, relog_into)):
        journaled = _journal_a_run(project, f"90{number}-journaled")
        out = _ok(_small(line), project)
        assert ("re-logged from their journals" if line == resume else "re-logged run") in out, out
        assert _replayed(journaled) and not list((project / "results").rglob(record.JOURNAL))

    publish_all, one_model, keep, no_models = [_small(line) for line in block("export").commands()]
    for line in (publish_all, one_model, keep):
        _ok(line, project)
    exported = project / "results" / "flowers" / "models" / "torch-cnn"
    assert {"model.onnx", "model.pt2"} <= {path.name for path in exported.iterdir()}
    assert "0 failed" in _ok(no_models, project)


def _one_trial_line(line: str) -> str:
    """The README's one-trial lines at digits-smoke size: 1 epoch, 12 images per class, 32 px."""
    if line.startswith("papermill"):
        return line + " -p epochs 1 -p max_per_class 12 -p image_size 32"
    return line + " --set epochs=1 --set max_per_class=12"


@pytest.mark.slow
def test_readme_one_trial_with_papermill_and_the_cli(project):
    lines = block("one-trial").commands()
    assert len(lines) == 3
    for line in lines:
        _ok(_one_trial_line(line), project)
    runs = store.client().search_runs([store.experiment_id("default"), store.experiment_id("single")])
    models = sorted((run.data.params["framework"], run.data.params["model"]) for run in runs if run.info.status == "FINISHED")
    assert models == [("keras", "cnn_attention"), ("keras", "vgg16"), ("torch", "resnet50")]
    assert (project / "out.ipynb").is_file()


def test_readme_grid52_plans(project):
    """The grid's lines plan what the README says; the runs are the grid's own tests' (halving and
    workers: test_sweep_logic, test_sweep_parallel), so here each line is run with --dry-run."""
    lines = block("grid52").commands()
    assert "104 trials in experiment 'grid52'" in _ok(lines[0], project)
    planned = [_ok(line + " --dry-run", project) for line in lines[1:]]
    assert "52 trials in experiment 'grid52'" in planned[0]
    assert "52 trials x 1 epochs -> 17 trials x 5 epochs -> 5 trials x 16 epochs -> 1 trials x 50 epochs" in planned[1]
    assert "24 of them run (12 per model and framework" in planned[2] and "4 more seed(s)" in planned[2]
    assert not (project / "results" / "grid52").exists()
