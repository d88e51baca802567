"""`imagebench diff RUN_A RUN_B`: two trials' executed notebooks side by side (nbdime), the parameters
and metrics that differ on top; the same inline in the leaderboard notebook."""

import json
import subprocess
from pathlib import Path

import pytest
from helpers import BIN, assert_refused, recorded_trial, run_imagebench, run_shell, run_sweep, trial_runs, write_sweep_file
from readme_blocks import block

from imagebench import store

EXPERIMENT = "nbdiff"


@pytest.fixture(scope="module")
def two_trials(module_project):
    """One tiny torch sweep of two trials that differ only in their learning rate, (A: 0.001, B: 0.01)."""
    write_sweep_file(module_project, EXPERIMENT, "{learning_rate: [0.001, 0.01]}")
    done = run_sweep(module_project, f"params/{EXPERIMENT}.yaml", "--quiet")
    assert done.returncode == 0, done.stdout + done.stderr
    runs = sorted(trial_runs(EXPERIMENT), key=lambda run: float(run.data.params["learning_rate"]))
    return module_project, runs[0].info, runs[1].info


def _record_row(key, a, b) -> str:
    return f"<td>{key}</td><td>{a}</td><td>{b}</td>"


@pytest.mark.slow
def test_diff_writes_both_notebooks_side_by_side_under_what_differs(two_trials, tmp_path):
    root, a, b = two_trials
    by_ids, by_names = block("notebook-diff").commands(RUN_ID_A=b.run_id, RUN_ID_B=a.run_id, NAME_A=a.run_name, NAME_B=b.run_name,
                                                       EXPERIMENT=EXPERIMENT)  # docs/tutorials/reviewer.md
    by_name = run_shell(by_names, root)
    assert by_name.returncode == 0, by_name.stderr
    path = Path(by_name.stdout.strip())
    assert path == root / "results" / EXPERIMENT / "diffs" / f"{a.run_name}-vs-{b.run_name}.html"
    record, notebooks = path.read_text(encoding="utf-8").split("The executed notebooks")
    assert _record_row("learning_rate", "0.001", "0.01") in record and "<td>metric</td><td>test/loss</td>" in record
    assert "optimizer" not in record and "epochs" not in record  # only what differs
    assert "<del>learning_rate = 0.001</del>" in notebooks and "<ins>learning_rate = 0.01</ins>" in notebooks  # the parameters cells
    assert a.run_id in notebooks and b.run_id in notebooks and notebooks.count("data:image/png") >= 4  # both sides' figures
    assert "unchanged markdown cell: # Train one trial" in notebooks  # folded
    assert "iopub.execute_input" not in notebooks  # papermill's timestamps are no difference between trials

    by_id = run_shell(by_ids, root)  # B first this time; no --experiment needed
    assert by_id.returncode == 0 and by_id.stdout.strip() == str(path.parent / f"{b.run_name}-vs-{a.run_name}.html"), by_id.stderr
    assert _record_row("learning_rate", "0.01", "0.001") in Path(by_id.stdout.strip()).read_text(encoding="utf-8")
    elsewhere = run_imagebench("diff", a.run_id, b.run_id, "--output", tmp_path / "a-b.html", cwd=root)
    assert elsewhere.returncode == 0 and elsewhere.stdout.strip() == str(tmp_path / "a-b.html"), elsewhere.stderr


@pytest.mark.slow
def test_the_leaderboard_notebook_shows_the_diff_inline(two_trials, tmp_path):
    root, a, b = two_trials
    executed = tmp_path / "leaderboard.ipynb"
    settings = json.dumps({"experiment": EXPERIMENT, "write_files": False, "diff_runs": f"{a.run_name} {b.run_name}"})
    done = subprocess.run([str(BIN / "papermill"), "notebooks/leaderboard.ipynb", str(executed), "-y", settings], cwd=root,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shown = ["".join(output["data"]["text/html"]) for cell in json.loads(executed.read_text())["cells"]
             for output in cell.get("outputs", []) if "imagebench-diff" in "".join(output.get("data", {}).get("text/html", ""))]  # fmt: skip
    assert len(shown) == 1 and _record_row("learning_rate", "0.001", "0.01") in shown[0] and "<ins>learning_rate = 0.01</ins>" in shown[0]


@pytest.mark.parametrize("arguments, message", [
    (["0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"], "run 0123456789abcdef0123456789abcdef is not in the store"),
    (["001-torch-cnn", "002-torch-cnn"], "no trial run named '001-torch-cnn' (give --experiment to find a run by its name)"),
    (["001-torch-cnn", "002-torch-cnn", "--experiment", "nowhere"], "no trial run named '001-torch-cnn' in experiment 'nowhere'"),
])  # fmt: skip
def test_diff_refuses_runs_it_cannot_find(project, arguments, message):
    assert_refused("diff", *arguments, message=message, cwd=project)


def test_diff_refuses_a_parent_run_and_a_trial_without_its_notebook(project):
    parent = store.start_sweep_run("parent", "params/parent.yaml")
    bare = recorded_trial("bare", "cnn", "torch", 0.5, 0.7, 0.5)  # recorded without papermill: no notebook artifact
    assert_refused("diff", parent, bare, message=f"run {parent} is not a trial run (role 'sweep')", cwd=project)
    assert_refused("diff", bare, bare, message=f"run {bare} (torch-cnn-0.5) has no executed notebook under its 'notebook/' artifacts", cwd=project)
    assert not (project / "results").exists()  # nothing written
