"""The notebooks are committed clean, tagged, and the train.ipynb parameters cell is TrialParams."""

import ast
import json

import pytest
from conftest import REPO

from imagebench.params import TrialParams

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
