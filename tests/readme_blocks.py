"""The README and the documentation as the acceptance test: the command blocks a user is told to
type, read from the pages themselves, so a test runs what the page says and fails when the two drift
apart.

The pages are README.md and every Markdown page under docs/ (the reference and benchmark pages are
generated in memory at build time by tools/docs_reference.py, so no file of theirs is read here).
Every ```bash block of a page is preceded by one marker line:
    <!-- readme: ID -->                 a test runs this block (``block("ID")``)
    <!-- readme: not-run: REASON -->    not runnable by the tests (e.g. a real multi-machine cluster)
``tests/test_readme.py`` checks that every block carries one, that every ID is used by a test and
that no ID is used twice across all the pages, so ``block("ID")`` finds a block wherever it moved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
MARKER = re.compile(r"^<!-- readme: (?P<body>.+?) -->\s*$")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
NOT_RUN = "not-run:"


@dataclass(frozen=True)
class Block:
    marker: str  # the ID, or "not-run: REASON"; "" when the block has none
    line: int  # 1-based line of the opening fence
    text: str
    page: Path  # the Markdown file holding the block

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"

    @property
    def runnable(self) -> bool:
        return bool(self.marker) and not self.marker.startswith(NOT_RUN)

    def commands(self, **replace: str) -> list[str]:
        """The block's command lines: comments and blank lines dropped, continuation lines joined,
        then each ``replace`` key (a placeholder of the README such as ``HEAD:6379``) replaced."""
        joined = re.sub(r"\\\n\s*", " ", self.text)
        lines = []
        for raw in joined.splitlines():
            line = _without_comment(raw).strip()
            if not line:
                continue
            for old, new in replace.items():
                line = line.replace(old, new)
            lines.append(line)
        return lines


def _without_comment(line: str) -> str:
    """The line up to a ``#`` outside quotes that starts a word (a shell comment)."""
    quote = None
    for index, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def pages() -> list[Path]:
    """README.md and the documentation's Markdown pages, the places a user reads commands from."""
    return [README, *sorted(DOCS.rglob("*.md"))]


def blocks(path: Path = README) -> list[Block]:
    """Every ```bash block of ``path`` with the marker on the line before its fence."""
    lines = path.read_text().splitlines()
    found, index = [], 0
    while index < len(lines):
        fence = FENCE.match(lines[index])
        if not fence:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if fence["lang"] in ("bash", "sh", "shell", "console"):
            previous = MARKER.match(lines[index - 1]) if index else None
            found.append(Block(previous["body"].strip() if previous else "", index + 1, "\n".join(lines[index + 1:end]), path))
        index = end + 1
    return found


def all_blocks() -> list[Block]:
    """Every ```bash block of every page, README.md first."""
    return [found for page in pages() for found in blocks(page)]


def block(identifier: str) -> Block:
    """The block marked ``<!-- readme: identifier -->`` in README.md or a docs page; KeyError says
    where it was looked for if it is gone."""
    for candidate in all_blocks():
        if candidate.marker == identifier:
            return candidate
    raise KeyError(f"no block marked <!-- readme: {identifier} --> in README.md or docs/**/*.md")
