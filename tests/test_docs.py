"""`make docs`: the MkDocs site builds strictly, its reference pages come from the code, and a broken
link or a missing page fails the build."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from imagebench import cli, server
from imagebench.sweep import grid
from imagebench.core.params import TrialParams
from helpers import REPO

SITE_SOURCES = ["mkdocs.yml", "Makefile", "pyproject.toml", "docs", "tools", "results/benchmarks"]


def _docs_project(root: Path) -> Path:
    """What `make docs` reads, copied into ``root``, with the repository's venv."""
    for name in SITE_SOURCES:
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        copy(REPO / name, root / name)
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


def _make_docs(root: Path) -> subprocess.CompletedProcess:
    # -o: the copy's venv stamp is never remade here (that would reinstall the shared venv)
    return subprocess.run(["make", "-o", ".venv/.installed-stamp", "docs"], cwd=root, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def _page(root: Path, name: str) -> str:
    return (root / "site" / name / "index.html").read_text()


def test_make_docs_writes_reference_pages_from_the_code(tmp_path):
    root = _docs_project(tmp_path)
    built = _make_docs(root)
    assert built.returncode == 0, built.stdout + built.stderr
    commands = next(action for action in cli.build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    assert commands.choices, "no imagebench subcommands found"
    reference = _page(root, "reference/cli")
    missing = [name for name in commands.choices if f'<h2 id="imagebench-{name}">imagebench {name}' not in reference]
    assert not missing, f"subcommands not in the command-line page: {missing}"
    assert "<code>--dry-run</code>" in reference
    server_commands = next(action for action in server.build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    for name, subparser in server_commands.choices.items():  # `imagebench server` has a parser of its own
        assert f'<h3 id="imagebench-server-{name}">imagebench server {name}' in reference, name
        missing = [option for action in subparser._actions for option in action.option_strings[:1]
                   if option != "-h" and f"<code>{option}</code>" not in reference]
        assert not missing, f"options of imagebench server {name} not on the command-line page: {missing}"
    parameters = _page(root, "reference/parameters")
    missing = [name for name in [*TrialParams.model_fields, *grid.SWEEP_KEYS] if f"<code>{name}</code>" not in parameters]
    assert not missing, f"not in the parameters page: {missing}"
    benchmarks = _page(root, "benchmarks")
    for path in (REPO / "results" / "benchmarks").rglob("*.json"):
        assert f"<code>{json.loads(path.read_text())['command']}</code>" in benchmarks, path


@pytest.mark.parametrize("breakage", ["broken link", "missing page"])
def test_make_docs_fails_on_a_broken_link_or_a_missing_page(tmp_path, breakage):
    root = _docs_project(tmp_path)
    if breakage == "broken link":
        with open(root / "docs" / "index.md", "a") as index:
            index.write("\nSee [the tutorial](no-such-tutorial.md).\n")
        named = "no-such-tutorial.md"
    else:
        (root / "docs" / "lessons.md").unlink()  # still in the nav and linked from architecture.md
        named = "lessons.md"
    built = _make_docs(root)
    assert built.returncode != 0, f"{breakage}: the strict build passed"
    assert named in built.stdout + built.stderr
