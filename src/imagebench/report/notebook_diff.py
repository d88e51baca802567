"""``imagebench diff RUN_A RUN_B``: two trials' executed notebooks side by side, as one HTML page.

Each trial run keeps its executed notebook as an MLflow artifact under ``notebook/``. nbdime
decides what changed (``nbdime.diff_notebooks`` matches the cells of the two notebooks); this
module draws its answer as a static page (nbdime's own HTML view is a JavaScript app that needs
its server): the parameters and metrics that differ on top, then every cell of A beside the cell
nbdime matched it with in B, changed lines marked, unchanged cells folded. What papermill and
Jupyter write on every execution (timestamps, execution counts, cell ids) is left out before the
diff: it differs between any two runs and says nothing about the trials.
"""

from __future__ import annotations

import copy
import difflib
import html
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from imagebench import store
from imagebench.core import names
from imagebench.core.params import ParamsError

DIFFS_DIR = "diffs"  # results/<experiment>/diffs/<a>-vs-<b>.html
_NOISE = ("metadata", "execution_count", "id")  # what every execution rewrites


class DiffError(ParamsError):
    """Bad input: an unknown run, a run that is no trial, or a trial without its notebook (exit 2)."""


@dataclass
class Trial:
    """One side of the diff: its run and its executed notebook."""

    run: object
    notebook: object  # nbformat.NotebookNode

    @property
    def label(self) -> str:
        """The run's name when it can name a file (trial names always can), else its id."""
        name = self.run.info.run_name
        return name if names.is_safe(name) else self.run.info.run_id


def load_trial(reference: str, experiment: Optional[str], folder: Path) -> Trial:
    """The run and its executed notebook, downloaded from the run's ``notebook/`` artifacts into ``folder``."""
    import nbformat

    run = store.find_trial_run(reference, experiment)
    listed = [item.path for item in store.client().list_artifacts(run.info.run_id, store.ARTIFACT_NOTEBOOK_DIR)]
    notebooks = sorted(path for path in listed if path.endswith(".ipynb"))
    if not notebooks:
        raise DiffError(f"run {run.info.run_id} ({run.info.run_name}) has no executed notebook under its "
                        f"'{store.ARTIFACT_NOTEBOOK_DIR}/' artifacts: its trial did not run through papermill to the end")  # fmt: skip
    path = store.client().download_artifacts(run.info.run_id, notebooks[-1], str(folder / run.info.run_id))
    return Trial(run, nbformat.read(path, as_version=4))


def record_differences(a, b) -> list[tuple[str, str, str, str]]:
    """(kind, key, A's value, B's value) for every parameter and metric the two runs do not share."""
    rows = []
    for kind, mine, theirs in (("param", a.data.params, b.data.params), ("metric", a.data.metrics, b.data.metrics)):
        for key in sorted(set(mine) | set(theirs)):
            if mine.get(key) != theirs.get(key):
                rows.append((kind, key, _value_text(mine.get(key)), _value_text(theirs.get(key))))
    return rows


def _value_text(value) -> str:
    if value is None:
        return "(not recorded)"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def without_noise(notebook):
    """A copy of ``notebook`` without what every execution rewrites (timestamps, counts, ids)."""
    clean = copy.deepcopy(notebook)
    clean.metadata = {}
    for cell in clean.cells:
        for key in _NOISE:
            cell.pop(key, None)
    return clean


def paired_cells(a, b) -> list[tuple[Optional[dict], Optional[dict], str]]:
    """(A's cell, B's cell, "same" | "changed" | "removed" | "added") in reading order, as nbdime pairs them."""
    import nbdime

    a, b = without_noise(a), without_noise(b)
    operations = next((op["diff"] for op in nbdime.diff_notebooks(a, b) if op["key"] == "cells"), [])
    added = {op["key"]: op["valuelist"] for op in operations if op["op"] == "addrange"}
    removed = {index for op in operations if op["op"] == "removerange" for index in range(op["key"], op["key"] + op["length"])}
    patched = {op["key"] for op in operations if op["op"] == "patch"}
    pairs, in_b = [], 0  # in_b: the index in B of the next cell not yet paired
    for index in range(len(a.cells) + 1):
        for cell in added.get(index, []):  # inserted before A's cell ``index``
            pairs.append((None, cell, "added"))
            in_b += 1
        if index == len(a.cells):
            return pairs
        if index in removed:
            pairs.append((a.cells[index], None, "removed"))
            continue
        pairs.append((a.cells[index], b.cells[in_b], "changed" if index in patched else "same"))
        in_b += 1


def cell_lines(cell: Optional[dict]) -> list[str]:
    """The lines a reader compares: the source, then each output's text (an image as one line naming it)."""
    if cell is None:
        return []
    lines = cell.get("source", "").splitlines()
    for output in cell.get("outputs", []):
        lines.append(f"--- {output.get('output_type')} ---")
        lines += _output_lines(output)
    return lines


def _output_lines(output: dict) -> list[str]:
    if "text" in output:
        return "".join(output["text"]).splitlines()
    data = output.get("data", {})
    if "text/plain" in data:
        return "".join(data["text/plain"]).splitlines()
    if "ename" in output:
        return [f"{output['ename']}: {output.get('evalue', '')}"]
    return [f"[{', '.join(sorted(data))}]"]


def _images(cell: Optional[dict]) -> list[str]:
    return [output["data"]["image/png"] for output in (cell or {}).get("outputs", []) if "image/png" in output.get("data", {})]


def _marked(lines: list[str], other: list[str], mark: str) -> str:
    """``lines`` as HTML, those not found in ``other`` wrapped in ``mark`` (del on A's side, ins on B's)."""
    kept = set()
    for block in difflib.SequenceMatcher(a=lines, b=other, autojunk=False).get_matching_blocks():
        kept.update(range(block.a, block.a + block.size))
    return "\n".join(html.escape(line) if index in kept else f"<{mark}>{html.escape(line)}</{mark}>" for index, line in enumerate(lines))


def _side(cell: Optional[dict], other: Optional[dict], mark: str) -> str:
    if cell is None:
        return "<td class='absent'></td>"
    images = "".join(f"<img src='data:image/png;base64,{''.join(data).strip()}'>" for data in _images(cell))
    return f"<td><pre>{_marked(cell_lines(cell), cell_lines(other), mark)}</pre>{images}</td>"


def _cell_row(a: Optional[dict], b: Optional[dict], status: str) -> str:
    if status == "same":
        first = next(iter(cell_lines(a)), "")
        body = f"<pre>{html.escape(chr(10).join(cell_lines(a)))}</pre>"
        return (f"<tr class='same'><td colspan='2'><details><summary>unchanged {a.get('cell_type')} cell: "
                f"{html.escape(first[:100])}</summary>{body}</details></td></tr>")  # fmt: skip
    return f"<tr class='{status}'>{_side(a, b, 'del')}{_side(b, a, 'ins')}</tr>"


def _record_table(a: Trial, b: Trial) -> str:
    rows = record_differences(a.run, b.run)
    if not rows:
        return "<p>The two runs record the same parameters and metrics.</p>"
    body = "".join(f"<tr><td>{kind}</td><td>{html.escape(key)}</td><td>{html.escape(left)}</td><td>{html.escape(right)}</td></tr>"
                   for kind, key, left, right in rows)  # fmt: skip
    head = f"<tr><th></th><th>name</th><th>A: {html.escape(a.label)}</th><th>B: {html.escape(b.label)}</th></tr>"
    return f"<table class='record'>{head}{body}</table>"


STYLE = """
.imagebench-diff { font-family: sans-serif; font-size: 13px; }
.imagebench-diff table { border-collapse: collapse; width: 100%; table-layout: fixed; }
.imagebench-diff table.record { width: auto; margin-bottom: 1em; }
.imagebench-diff td, .imagebench-diff th { border: 1px solid #ccc; padding: 3px 6px; vertical-align: top; text-align: left; }
.imagebench-diff pre { white-space: pre-wrap; word-break: break-all; margin: 0; font-size: 12px; }
.imagebench-diff del { background: #fdd; text-decoration: none; display: inline-block; width: 100%; }
.imagebench-diff ins { background: #dfd; text-decoration: none; display: inline-block; width: 100%; }
.imagebench-diff tr.added td:not(.absent) { background: #efe; }
.imagebench-diff tr.removed td:not(.absent) { background: #fee; }
.imagebench-diff td.absent { background: #f4f4f4; }
.imagebench-diff tr.same summary { color: #777; cursor: pointer; }
.imagebench-diff img { max-width: 100%; }
"""


def diff_fragment(a: Trial, b: Trial) -> str:
    """The diff as one ``<div>`` (its own styles): for a page, or inline in a notebook."""
    rows = "".join(_cell_row(*pair) for pair in paired_cells(a.notebook, b.notebook))
    columns = f"<tr><th>A: {html.escape(a.label)} ({a.run.info.run_id})</th><th>B: {html.escape(b.label)} ({b.run.info.run_id})</th></tr>"
    return (f"<div class='imagebench-diff'><style>{STYLE}</style><h2>{html.escape(a.label)} vs {html.escape(b.label)}</h2>"
            f"<h3>Parameters and metrics that differ</h3>{_record_table(a, b)}"
            f"<h3>The executed notebooks (nbdime's cell matching; changed lines marked)</h3><table>{columns}{rows}</table></div>")  # fmt: skip


def load_pair(reference_a: str, reference_b: str, experiment: Optional[str] = None) -> tuple[Trial, Trial]:
    """Both trials with their notebooks (read into memory; the downloads are deleted)."""
    with tempfile.TemporaryDirectory(prefix="imagebench-diff-") as folder:
        return load_trial(reference_a, experiment, Path(folder)), load_trial(reference_b, experiment, Path(folder))


def render(runs: str, experiment: Optional[str] = None) -> str:
    """The diff of the two trial runs ``runs`` names ("RUN_A RUN_B": ids, or names within ``experiment``) as an
    HTML fragment: the leaderboard notebook's ``diff_runs`` shown inline."""
    references = runs.split()
    if len(references) != 2:
        raise DiffError(f"diff_runs = {runs!r}: give two trial runs, their ids or names separated by a space")
    return diff_fragment(*load_pair(*references, experiment))


def write(reference_a: str, reference_b: str, experiment: Optional[str] = None, output: Optional[Path] = None) -> Path:
    """The diff as a page: ``output``, else ``results/<experiment>/diffs/<a>-vs-<b>.html`` (A's experiment)."""
    a, b = load_pair(reference_a, reference_b, experiment)
    if output is None:
        name = experiment or store.client().get_experiment(a.run.info.experiment_id).name
        output = store.results_dir(name) / DIFFS_DIR / f"{a.label}-vs-{b.label}.html"
    output.parent.mkdir(parents=True, exist_ok=True)
    title = html.escape(f"{a.label} vs {b.label}")
    output.write_text(f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{title}</title></head><body>{diff_fragment(a, b)}</body></html>\n",
                      encoding="utf-8")  # fmt: skip
    return output
