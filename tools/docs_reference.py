"""MkDocs hook (``hooks:`` in mkdocs.yml): writes the reference pages from the code at build time.

The command line comes from ``imagebench.cli.build_parser``, the parameters from
``imagebench.core.params.TrialParams``, the sweep-file keys from ``imagebench.sweep.grid.SHAPES`` and the
benchmarks from ``results/benchmarks/**/*.json``, so a new option, parameter or measurement appears
in the site without anyone retyping it. None of these imports loads TensorFlow or torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from mkdocs.structure.files import File

from imagebench import cli, server
from imagebench.sweep import grid
from imagebench.core.params import TrialParams

CONSTRAINTS = {"Ge": ">=", "Gt": ">", "Le": "<=", "Lt": "<", "MinLen": "length >="}


def _cell(text: Any) -> str:
    """One Markdown table cell: a `|` would end the cell, a newline the row, and <experiment> would be read as HTML."""
    return str(text).replace("|", "&#124;").replace("<", "&lt;").replace("\n", " ")


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _argument_row(action: argparse.Action) -> list[str]:
    name = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.choices:
        name += " (" + " / ".join(f"`{choice}`" for choice in action.choices) + ")"
    shown_default = action.default not in (None, False, [], argparse.SUPPRESS) and not action.required
    required = "required" if action.required or not action.option_strings else ""
    return [name, action.help or "", f"`{action.default}`" if shown_default else required]


def cli_page() -> str:
    parser = cli.build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}
    parts = ["# Command line\n", "`imagebench <command> [options]`, commands: " + ", ".join(commands.choices) + ".\n",
             "Generated from `imagebench.cli.build_parser`; `imagebench <command> --help` prints the same.\n"]
    for name, subparser in commands.choices.items():
        parts.append(f"## imagebench {name}\n\n{summaries[name]}\n")
        if name == "server":  # its own parser (python -m imagebench.server) takes every argument through
            parts.append(server_section())
            continue
        parts.append(_options_table(subparser))
    return "\n".join(parts)


def _options_table(parser: argparse.ArgumentParser) -> str:
    rows = [_argument_row(action) for action in parser._actions if not isinstance(action, argparse._HelpAction)]
    return _table(["argument", "meaning", "default"], rows)


def server_section() -> str:
    """``imagebench server start|stop|status``, from ``imagebench.server.build_parser``."""
    parser = server.build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    summaries = {choice.dest: choice.help for choice in commands._choices_actions}
    parts = ["Generated from `imagebench.server.build_parser` (also `python -m imagebench.server`, `make server`).\n"]
    for name, subparser in commands.choices.items():
        parts.append(f"### imagebench server {name}\n\n{summaries[name]}\n")
        parts.append(_options_table(subparser))
    return "\n".join(parts)


def _type_name(annotation: Any) -> str:
    if get_origin(annotation) is Literal:
        return " / ".join(f"`{value}`" for value in get_args(annotation))
    return annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")


def _constraints(metadata: list) -> str:
    words = []
    for rule in metadata:
        symbol = CONSTRAINTS.get(type(rule).__name__)
        if symbol:
            words.append(f"{symbol} {dataclasses.astuple(rule)[0]}")  # annotated_types.Ge(ge=32) etc.
    return ", ".join(words)


def parameters_page() -> str:
    rows = [[f"`{name}`", _type_name(field.annotation), f"`{json.dumps(field.default)}`", _constraints(field.metadata), field.description or ""]
            for name, field in TrialParams.model_fields.items()]
    example = textwrap.dedent(grid.__doc__.split("::\n\n")[1].split("\n\n")[0])
    keys = [[f"`{key}`", kind.__name__, holds] for key, (kind, holds, _) in grid.SHAPES.items()]
    return "\n".join([
        "# Sweep files and parameters\n",
        "Generated from `imagebench.sweep.grid` and `imagebench.core.params.TrialParams`.\n",
        "## Sweep file\n", f"```yaml\n{example}\n```\n", _table(["key", "type", "holds"], keys),
        "## Trial parameters\n",
        "Each is a key of `base`, `matrix`, `exclude` and `include`, of `imagebench sweep --set KEY=VALUE`, "
        "`imagebench trial --set KEY=VALUE` and of papermill's `-p KEY VALUE` on `notebooks/train.ipynb`.\n",
        _table(["parameter", "type", "default", "allowed", "meaning"], rows),
    ])


def _figures(record: dict) -> list[list[str]]:
    """The numbers of one benchmark: top-level scalars, and scalars one level down (baseline, ours, machine)."""
    rows = []
    for key, value in record.items():
        inner = value.items() if isinstance(value, dict) else [("", value)]
        for name, number in inner:
            if isinstance(number, (int, float, str)) and key not in ("name", "command", "notes", "goal"):
                shown = f"{number:.4g}" if isinstance(number, float) else number
                rows.append([f"{key} {name}".strip(), shown])
    return rows


def benchmarks_page(root: Path) -> str:
    folder = root / "results" / "benchmarks"
    parts = ["# Benchmarks\n", "Generated from `results/benchmarks/**/*.json` (`make bench` writes them; "
             "each compares ours with a baseline measured in the same run).\n"]
    for path in sorted(folder.rglob("*.json")):
        record = json.loads(path.read_text())
        parts.append(f"## {path.relative_to(folder).with_suffix('')}\n")
        parts += [f"{label}: {record[key]}\n" for key, label in (("goal", "Goal"), ("notes", "Setup")) if key in record]
        if "command" in record:
            parts.append(f"Command: `{record['command']}`\n")
        parts.append(_table(["figure", "value"], _figures(record)))
    return "\n".join(parts)


def on_files(files, config):
    root = Path(config.config_file_path).parent
    pages = {"reference/cli.md": cli_page(), "reference/parameters.md": parameters_page(), "benchmarks.md": benchmarks_page(root)}
    for uri, text in pages.items():
        files.append(File.generated(config, uri, content=text))
    return files
