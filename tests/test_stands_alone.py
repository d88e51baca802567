"""The project stands alone: no file it ships points at a file it does not contain."""

import re
import subprocess
from pathlib import Path

from helpers import REPO

OUTSIDE = re.compile(r"DESIGN\.md|seeds\.md|\.\./shared/|shared/reference")
DOC_PATH = re.compile(r"docs/[\w./-]+\.md")


def _tracked_text_files():
    names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        path = REPO / name
        if path.suffix in {".py", ".md", ".yaml", ".yml", ".toml", ".ipynb", ".cfg"} or path.name == "Makefile":
            yield path


def test_no_file_points_outside_the_repository():
    offenders = [str(path.relative_to(REPO)) for path in _tracked_text_files()
                 if path != Path(__file__).resolve() and OUTSIDE.search(path.read_text())]  # this file names them
    assert not offenders, f"these files point at files the repository does not contain: {offenders}"


def test_every_docs_page_cited_exists():
    cited = {match for path in _tracked_text_files() for match in DOC_PATH.findall(path.read_text())}
    assert "docs/lessons.md" in cited
    missing = sorted(name for name in cited if not (REPO / name).is_file())
    assert not missing, f"cited but not in the repository: {missing}"
