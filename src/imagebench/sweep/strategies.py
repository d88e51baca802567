"""Sweep strategies, a registry: name → how trials are selected, described (dry run) and run.

- ``grid``: every trial.
- ``random:K``: a seeded K per model and framework.
- ``halving``: successive halving over epochs, each survivor continued from its checkpoint.

The arithmetic is pure and tested on its own; ``run`` drives a ``SweepRunner`` through the few
primitives it offers (whole-trial jobs, staged jobs, execute, scores), so a new strategy is one
entry here and nothing in ``runner.py`` or ``cli.py``.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Optional

from imagebench.core.planned import Trial
from imagebench.core.params import ParamsError
from imagebench import store
from imagebench.core.metrics import ranking_key


# --- the arithmetic (pure)
def group_key(trial: Trial) -> tuple[str, str]:
    return trial.params.model, trial.params.framework


def grouped(trials: list[Trial]) -> dict[tuple[str, str], list[Trial]]:
    groups: dict[tuple[str, str], list[Trial]] = defaultdict(list)
    for trial in trials:
        groups[group_key(trial)].append(trial)
    return dict(groups)


def random_subset(trials: list[Trial], count: int, seed: int) -> list[Trial]:
    """``count`` trials per (model, framework), drawn with ``seed``; plan order kept."""
    groups = grouped(trials)
    chosen = {t.name for members in groups.values() for t in random.Random(seed).sample(members, min(count, len(members)))}
    return [trial for trial in trials if trial.name in chosen]


def halving_budgets(max_epochs: int, eta: int) -> list[int]:
    """Epoch budget per rung, smallest first: ..., E/eta^2, E/eta, E (integer division, at least 1)."""
    budgets = [max_epochs]
    while budgets[0] // eta >= 1:
        budgets.insert(0, budgets[0] // eta)
    return budgets


def survivors_count(entrants: int, eta: int) -> int:
    return max(1, entrants // eta)


def promote(scores: dict[str, tuple[float, float]], eta: int) -> list[str]:
    """The best 1/eta of a rung (at least one): highest val accuracy, ties to lower val loss.

    ``scores`` maps each trial that finished the rung to (val accuracy, val loss); trials that
    failed are absent and never promoted.
    """
    ranked = sorted(scores, key=lambda name: (*ranking_key(*scores[name]), name))
    return ranked[: survivors_count(len(scores), eta)] if scores else []


# --- the strategies
def _every(trials: list[Trial], count: Optional[int]) -> list[Trial]:
    return trials


def _random(trials: list[Trial], count: Optional[int]) -> list[Trial]:
    return random_subset(trials, count, trials[0].params.seed)


def _describe_nothing(trials: list[Trial], options) -> list[str]:
    return []


def _describe_random(trials: list[Trial], options) -> list[str]:
    count = parse_strategy(options.strategy)[1]
    return [f"strategy random:{count}: {len(trials)} of them run ({count} per model and framework, seed {trials[0].params.seed})"]


def _describe_halving(trials: list[Trial], options) -> list[str]:
    budgets = halving_budgets(max(t.params.epochs for t in trials), options.eta)
    lines = []
    for members in grouped(trials).values():
        entrants, rungs = len(members), []
        for budget in budgets:
            rungs.append(f"{entrants} trials x {budget} epochs")
            entrants = survivors_count(entrants, options.eta)
        lines.append(f"halving (eta {options.eta}) {members[0].params.framework}/{members[0].params.model}: " + " -> ".join(rungs))
    return lines


def _run_whole(runner, trials: list[Trial]) -> None:
    runner.execute(runner.whole_trial_jobs(trials), runner.plan.experiment)


@dataclass(frozen=True)
class Stage:
    """One stage of a strategy that trains in stages (``SweepRunner.staged_jobs``)."""

    name: str  # in the notebook's file name: <trial>.<name>.ipynb
    budget: int  # epochs trained in all by the end of this stage
    step: int  # the MLflow step of the stage's metrics
    first: bool  # a trial already done at the first stage counts as skipped by resume
    tags: dict[str, str]  # set on the run when the stage's job starts
    metrics: Callable[[int], dict[str, float]]  # the trial's budget -> metrics logged at ``step``


def _rung(rung: int, budget: int, rungs: int) -> Stage:
    """Halving's rung as a stage of each trial's one run: tag ``imagebench.rung`` and the metrics
    ``halving/rung``, ``halving/epoch_budget`` at step = rung."""
    return Stage(f"rung{rung + 1}", budget, step=rung + 1, first=rung == 0,
                 tags={store.TAG_STRATEGY: "halving", store.TAG_RUNG: f"{rung + 1}/{rungs}"},
                 metrics=lambda trial_budget: {"halving/rung": rung + 1, "halving/epoch_budget": trial_budget})


def _run_halving(runner, trials: list[Trial]) -> None:
    """Each (model, framework) group: every trial trains the first rung's epochs, the best 1/eta
    continue from their checkpoints with eta times the epochs, until the full budget."""
    eta = runner.options.eta
    budgets = halving_budgets(max(t.params.epochs for t in trials), eta)
    alive = grouped(trials)
    for rung, budget in enumerate(budgets):
        stage = _rung(rung, budget, len(budgets))
        jobs = [job for members in alive.values() for job in runner.staged_jobs(members, stage)]
        runner.execute(jobs, f"{runner.plan.experiment} rung {rung + 1}/{len(budgets)} ({budget} epochs)")
        if rung + 1 < len(budgets):
            promoted = {key: runner.best(members, eta) for key, members in alive.items()}
            runner.drop_checkpoints(t for key, members in alive.items() for t in members if t not in promoted[key])
            alive = {key: members for key, members in promoted.items() if members}
    runner.drop_checkpoints(t for members in alive.values() for t in members)


@dataclass(frozen=True)
class Strategy:
    usage: str  # as the user types it
    counted: bool  # takes ":K"
    select: Callable[[list[Trial], Optional[int]], list[Trial]]
    describe: Callable[[list[Trial], object], list[str]]  # dry-run lines beyond the trial table
    run: Callable[[object, list[Trial]], None]


STRATEGIES = {
    "grid": Strategy("grid", False, _every, _describe_nothing, _run_whole),
    "random": Strategy("random:K", True, _random, _describe_random, _run_whole),
    "halving": Strategy("halving", False, _every, _describe_halving, _run_halving),
}


def parse_strategy(text: str) -> tuple[str, Optional[int]]:
    name, _, count = text.partition(":")
    strategy = STRATEGIES.get(name)
    if strategy is not None and not strategy.counted and not count:
        return name, None
    if strategy is not None and strategy.counted and count.isdigit() and int(count) > 0:
        return name, int(count)
    usages = ", ".join(entry.usage for entry in STRATEGIES.values())
    raise ParamsError(f"--strategy '{text}' is invalid: use one of {usages} (K a positive number)")


def strategy_for(text: str) -> tuple[Strategy, Optional[int]]:
    name, count = parse_strategy(text)
    return STRATEGIES[name], count
