"""The sweep's parent run is the report a reviewer reads in the MLflow UI.

Whenever a leaderboard is built for an experiment (at the end of a sweep, or by `imagebench
leaderboard`), it is published into the sweep's parent run, replacing what an earlier build put
there: the leaderboard as a table the UI renders and its md/csv/html/png files under one artifact
folder, a description (the run's overview page) with the leaderboard's first columns, the counts,
the strategy and the command that reproduces the sweep, and the leader's numbers as metrics. Each
leaderboard row's child run is tagged ``imagebench.leader = true`` with its rank, so one search in
the runs table shows exactly the leaderboard.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Optional

import pandas as pd

from imagebench import store
from imagebench.core import metrics
from imagebench.report.html_report import first_columns
from imagebench.report.leaderboard import cost_sums

ARTIFACT_DIR = "leaderboard"  # the parent run's folder of the leaderboard files and plots
TABLE_FILE = f"{ARTIFACT_DIR}/leaderboard_table.json"  # MLflow's table format: the UI renders it
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"  # how the UI knows which artifacts are tables
LEADER_SEARCH = f"tags.`{store.TAG_LEADER}` = 'true'"
def short_markdown(leaders: pd.DataFrame) -> str:
    table = first_columns(leaders).round(4)
    return table.astype(object).where(table.notna(), None).to_markdown(index=False, missingval="")


def _log_table(run_id: str, table: pd.DataFrame) -> None:
    """What ``MlflowClient.log_table`` writes, but replacing the file: log_table appends to an existing
    one, and a rebuilt leaderboard must not hold the old rows too."""
    client = store.client()
    with tempfile.TemporaryDirectory(prefix="imagebench-table-") as scratch:
        path = Path(scratch) / Path(TABLE_FILE).name
        table.to_json(path, orient="split", index=False, date_format="iso")
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)
    logged = json.loads(client.get_run(run_id).data.tags.get(LOGGED_ARTIFACTS_TAG, "[]"))
    entry = {"path": TABLE_FILE, "type": "table"}
    if entry not in logged:
        store.set_tags(run_id, {LOGGED_ARTIFACTS_TAG: json.dumps(logged + [entry])})


def description(experiment: str, leaders: pd.DataFrame, trials: pd.DataFrame, parent_tags: dict[str, str], reading: str = "") -> str:
    counts = trials["status"].value_counts() if "status" in trials else pd.Series(dtype=int)
    finished, failed = int(counts.get("FINISHED", 0)), int(len(trials) - counts.get("FINISHED", 0) - counts.get("RUNNING", 0))
    command = parent_tags.get(store.TAG_COMMAND) or f"imagebench sweep {parent_tags.get('imagebench.sweep_file', '<sweep file>')}"
    lines = [
        f"## Sweep `{experiment}`: leaderboard",
        "",
        f"{len(trials)} trials: **{finished} finished, {failed} failed**; strategy `{parent_tags.get(store.TAG_STRATEGY, 'grid')}`, "
        f"executor `{parent_tags.get(store.TAG_EXECUTOR, 'local')}`.",
        "One row per model and framework: the configuration with the best **validation** accuracy (ties: lower validation "
        "loss); its **test** numbers are reported, never used to choose.",
        "",
        short_markdown(leaders),
        "",
        *([f"**Reading:** {reading}", ""] if reading else []),
        f"Full table and plots: artifacts `{ARTIFACT_DIR}/` (leaderboard.html, leaderboard.csv, trials.csv, PNG). "
        f"The leaders in the runs table: [search `{LEADER_SEARCH}`]({store.ui_route(experiment, search=LEADER_SEARCH)}), "
        "then open the sweep's row.",
        "",
        f"Reproduce: `{command}`",
    ]
    return "\n".join(lines)


def mark_leaders(experiment: str, leaders: pd.DataFrame) -> None:
    """Tag this leaderboard's runs with their rank; runs that were leaders before and are no longer lose it."""
    client = store.client()
    ranks = {row.run_id: int(row.rank) for row in leaders.itertuples() if isinstance(row.run_id, str)}
    for run in store.search_trial_runs(experiment, LEADER_SEARCH):
        if run.info.run_id not in ranks:
            client.delete_tag(run.info.run_id, store.TAG_LEADER)
            client.delete_tag(run.info.run_id, store.TAG_RANK)
    for run_id, rank in ranks.items():
        store.set_tags(run_id, {store.TAG_LEADER: "true", store.TAG_RANK: str(rank)})


def publish(board, files: list[Path]) -> Optional[str]:
    """Put the leaderboard into the experiment's parent run (see the module); returns its id, or
    None when the experiment has no sweep (trials run on their own)."""
    parent = store.find_sweep_run(board.experiment)
    if parent is None:
        return None
    client = store.client()
    for path in files:
        client.log_artifact(parent, str(path), ARTIFACT_DIR)
    _log_table(parent, board.leaders)
    parent_tags = client.get_run(parent).data.tags
    store.set_tags(parent, {store.TAG_NOTE: description(board.experiment, board.leaders, board.trials, parent_tags, board.reading)})
    # what the sweep spent where (each ledger part and training, summed over its trials), and the
    # winner's val and test accuracy as leader/val_accuracy, leader/test_accuracy: one write
    values = cost_sums(board.trials)
    winner = board.winner
    if winner is not None:
        values.update({f"leader/{metric.column}": winner[metric.column] for metric in (metrics.BEST_VAL_ACCURACY, metrics.TEST_ACCURACY)})
    if values:
        store.log_metrics(parent, values)
    mark_leaders(board.experiment, board.leaders)
    return parent
