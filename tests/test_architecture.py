"""The package tree is the architecture: each layer imports only the layers below it (the
import-linter contract in pyproject.toml, run by `make lint`)."""

import re
import shutil
import subprocess
from pathlib import Path

from helpers import BIN, REPO


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # lint-imports reads the contract from pyproject.toml in the cwd and imports the package from src/
    return subprocess.run([str(BIN / "lint-imports")], cwd=root, capture_output=True, text=True,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "PYTHONPATH": str(root / "src")})


def test_every_package_imports_only_the_layers_below_it():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers_contract(tmp_path):
    shutil.copytree(REPO / "src", tmp_path / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    names = tmp_path / "src" / "imagebench" / "core" / "names.py"
    names.write_text(names.read_text() + "\nfrom imagebench.sweep import grid  # noqa: E402  (upward: core -> sweep)\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "imagebench.core.names -> imagebench.sweep.grid" in result.stdout


def test_no_test_module_imports_another_or_conftest():
    # shared test code lives in tests/helpers.py, tests/trial_checks.py and tests/readme_blocks.py;
    # conftest.py is pytest's (imported under another name it would run twice)
    importing = re.compile(r"^\s*(from|import)\s+(conftest|test_\w+)\b", re.M)
    offenders = [str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("*.py") if importing.search(path.read_text())]
    assert not offenders, f"these import a test module or conftest: {offenders}"
