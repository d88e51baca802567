"""The notebooks are committed clean, tagged, and the train.ipynb parameters cell is TrialParams."""

import ast
import json

import pytest
from helpers import REPO

from imagebench.core.params import TrialParams

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def _cells(path):
    return json.loads(path.read_text(encoding="utf-8"))["cells"]


def _parameters_cell(path):
    cells = [c for c in _cells(path) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name} must have exactly one cell tagged 'parameters'"
    return "".join(cells[0]["source"])


def test_the_three_notebooks_exist():
    assert {p.name for p in NOTEBOOKS} >= {"train.ipynb", "leaderboard.ipynb", "explore.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_without_outputs(path):
    for cell in _cells(path):
        if cell["cell_type"] == "code":
            assert cell.get("outputs", []) == [] and cell.get("execution_count") is None, path.name


def test_train_parameters_cell_equals_trialparams_defaults():
    namespace = {}
    exec(_parameters_cell(REPO / "notebooks" / "train.ipynb"), namespace)
    cell_values = {key: value for key, value in namespace.items() if not key.startswith("__")}
    assert cell_values == TrialParams().model_dump()


def test_train_parameters_cell_is_plain_assignments():
    tree = ast.parse(_parameters_cell(REPO / "notebooks" / "train.ipynb"))
    assert all(isinstance(node, ast.Assign) for node in tree.body)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_parameter(path, caplog):
    import papermill

    found = papermill.inspect_notebook(str(path))
    namespace = {}
    exec(_parameters_cell(path), namespace)
    assert set(found) == {key for key in namespace if not key.startswith("__")}
    assert "Unable to parse" not in caplog.text


@pytest.mark.slow
def test_the_notebooks_run_top_to_bottom_under_nbval(project):
    """As a Jupyter user checks a notebook: every cell runs (``pytest --nbval-lax``), train.ipynb with a
    small fast parameter set, then explore.ipynb, then leaderboard.ipynb on the tiny store train made."""
    import subprocess
    import sys

    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    settings = {
        "train.ipynb": dict(framework="torch", model="cnn", epochs=1, image_size=32, max_per_class=12, val_fraction=0.25,
                            test_fraction=0.25, experiment="nbval"),
        "explore.ipynb": dict(image_size=32),
        "leaderboard.ipynb": dict(experiment="nbval", write_files=False),
    }  # fmt: skip
    paths = []
    for name, values in settings.items():
        notebook = parameterize_notebook(load_notebook_node(str(REPO / "notebooks" / name)), values)
        path = project / "notebooks" / name
        nbformat.write(notebook, path)
        paths.append(str(path))
    done = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q", *paths], cwd=project,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "failed" not in done.stdout.splitlines()[-1] and "passed" in done.stdout.splitlines()[-1]
