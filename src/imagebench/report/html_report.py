"""leaderboard.html as a reviewer reads it: the columns read first, numbers formatted for people,
sortable by a click on a header, the plots beside the table, the full tables one click away.

Self-contained (plots inlined as PNG, a few lines of script for sorting), so it opens from disk, as
an MLflow artifact, or attached to an e-mail.
"""

from __future__ import annotations

import base64
import html
import math

import pandas as pd

from imagebench.core import metrics
from imagebench.models.registry import FRAMEWORKS

# the columns read first, in order (the full table is in <details>, and in leaderboard.csv)
FIRST_COLUMNS = ("rank", "model", "framework",
                 *(metric.column for metric in (metrics.TEST_ACCURACY, metrics.TEST_ACCURACY_CI95)), "tier", "p_vs_leader", "p_leader_better",
                 *(metric.column for metric in (metrics.BEST_VAL_ACCURACY, metrics.PARAMS, metrics.FLOPS, metrics.LATENCY_MS)),
                 "pareto", "optimizer", "learning_rate")  # fmt: skip


def _percent(value: float) -> str:
    return f"{100 * value:.2f} %"


def _plus_minus_percent(value: float) -> str:
    return f"± {100 * value:.2f} %"


def _millions(value: float) -> str:
    return f"{value / 1e6:.2f} M"


def _gflops(value: float) -> str:
    return f"{value / 1e9:.3f} G"


def _ms(value: float) -> str:
    return f"{value:.2f} ms"


FORMATTERS = {metrics.PERCENT: _percent, metrics.PLUS_MINUS_PERCENT: _plus_minus_percent, metrics.MILLIONS: _millions,
              metrics.GFLOPS: _gflops, metrics.MILLISECONDS: _ms}  # fmt: skip
FORMATS = {name: FORMATTERS[metric.format] for name, metric in metrics.COLUMNS.items() if metric.format}
# the leaderboard's columns under their names for people; any other column shows its name with spaces
HEADERS = {name: metric.title for name, metric in metrics.COLUMNS.items()}
PARITY_PREFIXES = tuple(f"{framework}_" for framework in FRAMEWORKS)  # the parity table's columns: keras_params, ...


def first_columns(leaders: pd.DataFrame) -> pd.DataFrame:
    """The columns read first, without those empty in every row (one seed: no interval)."""
    return leaders[[name for name in FIRST_COLUMNS if name in leaders]].dropna(axis=1, how="all")


def _cell(column: str, value) -> str:
    """A cell showing the formatted value, sorting on the raw one."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "<td data-value=''></td>"
    name = column.split("_", 1)[1] if column.startswith(PARITY_PREFIXES) else column
    shown = FORMATS[name](float(value)) if name in FORMATS else (f"{value:.4g}" if isinstance(value, float) else str(value))
    return f"<td data-value='{html.escape(str(value), quote=True)}'>{html.escape(shown)}</td>"


def table(frame: pd.DataFrame, css_class: str = "sortable") -> str:
    frame = frame.dropna(axis=1, how="all")
    head = "".join(f"<th title='click to sort'>{html.escape(HEADERS.get(c, c.replace('_', ' ')))}</th>" for c in frame.columns)
    rows = "".join("<tr>" + "".join(_cell(c, v) for c, v in zip(frame.columns, row)) + "</tr>"
                   for row in frame.itertuples(index=False))  # fmt: skip
    return f"<table class='{css_class}'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach((th, column) => th.addEventListener('click', () => {
  const body = th.closest('table').tBodies[0];
  const up = th.dataset.order !== 'asc';
  th.closest('tr').querySelectorAll('th').forEach(other => delete other.dataset.order);
  th.dataset.order = up ? 'asc' : 'desc';
  const key = row => row.cells[column].dataset.value;
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = key(a), y = key(b), nx = parseFloat(x), ny = parseFloat(y);
    const order = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return up ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}));
"""

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.report{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4;cursor:pointer;white-space:nowrap}th[data-order=asc]::after{content:' ▲'}th[data-order=desc]::after{content:' ▼'}
td:nth-child(-n+3){text-align:left}.figures{display:flex;flex-wrap:wrap;gap:1em;max-width:1000px}
figure{margin:0}figure img{max-width:480px}figure.wide img{max-width:1000px}details{margin-top:1.5em}summary{cursor:pointer;font-weight:600}
"""


def _picture(name: str, data: bytes) -> str:
    return (f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{name}">'
            f"<figcaption>{html.escape(name.replace('_', ' '))}</figcaption></figure>")  # fmt: skip


def render(experiment: str, leaders: pd.DataFrame, trials: pd.DataFrame, images: dict[str, bytes],
           parity: pd.DataFrame | None = None, reading: str = "", trial_images: dict[str, bytes] | None = None) -> str:  # fmt: skip
    """``trial_images``: figures of the trials view (the cost ledger), shown with the trials' table."""
    pictures = "".join(_picture(name, data) for name, data in images.items())
    trial_pictures = "".join(_picture(name, data).replace("<figure>", "<figure class='wide'>") for name, data in (trial_images or {}).items())
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>imagebench leaderboard: {html.escape(experiment)}</title>"
        f"<style>{STYLE}</style></head><body><h1>Leaderboard: {html.escape(experiment)}</h1>"
        "<p>One row per model and framework: the configuration with the best <b>validation</b> accuracy (ties: lower "
        "validation loss; the mean over seeds where repeated). Its <b>test</b> numbers are reported, never used to choose; "
        "± 95% CI: Student's t over seeds. Tier: rows not shown worse than the leader on the same test images share its tier "
        "(p vs leader: Holm-adjusted); pareto: the cost axes on whose accuracy-cost front the row is. Click a column to sort.</p>"
        + (f"<p class='reading'><b>Reading:</b> {html.escape(reading)}</p>" if reading else "")
        + f"<div class='report'><div>{table(first_columns(leaders))}</div><div class='figures'>{pictures}</div></div>"
        + (f"<h2>Framework parity: Keras next to PyTorch</h2>{table(parity)}" if parity is not None and len(parity) else "")
        + f"<details><summary>Every column of the leaderboard</summary>{table(leaders)}</details>"
        f"<details><summary>All {len(trials)} trials</summary>{trial_pictures}{table(trials)}</details>"
        f"<script>{SORT_SCRIPT}</script></body></html>"
    )
