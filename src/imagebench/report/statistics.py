"""Is the leader really better? The statistics the leaderboard reads, as pure functions of the rows'
recorded test predictions (``store.predictions``) and costs.

- **Tiers**: each row is compared with the leader (rank 1) on the same test images. One seed per
  row: McNemar's exact test on the images exactly one of the two gets right. Several seeds
  (``--repeats``): P(leader better), the probability that a leader seed beats a row seed (ties
  count half), with a percentile bootstrap interval over seeds, and a two-sided permutation test
  of the seeds' accuracies. The p-values are Holm-adjusted over the rows. Rows not shown worse
  (adjusted p >= ``ALPHA``) share the leader's tier 1; tier k+1 is the best-ranked row left and
  every remaining row not shown worse than it (same test, Holm over that round), and so on.
- **Parity**: Keras and PyTorch are "equivalent within ±δ" when two one-sided paired t-tests on
  the per-image correctness (TOST) reject a difference of δ or more; else "not shown".
- **Pareto front**: per cost axis, the rows no other row beats on both test accuracy and cost.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

ALPHA = 0.05  # the significance level of every test here
PARITY_MARGIN = 0.05  # δ: frameworks within 5 points of test accuracy count as equivalent
SMALL_TEST_SET = 1000  # below this many test images, the reading says how large a difference must be to be seen
BOOTSTRAP_RESAMPLES = 2000
NO_PREDICTIONS = "no test predictions recorded (a run recorded before imagebench logged them: run the sweep again)"
OTHER_TEST_SET = "other test images than the leader's (a different dataset, split or seeds): not comparable"


@dataclass(frozen=True)
class Comparison:
    """A reference row (the leader) against another row on the same test images."""

    p: float  # two-sided, before Holm
    reference_better: bool  # the direction of the observed difference
    probability: float = math.nan  # P(reference better) over seeds; NaN for one seed
    low: float = math.nan  # its bootstrap interval (95%)
    high: float = math.nan


@dataclass(frozen=True)
class Verdict:
    tier: Optional[int] = None
    p_vs_leader: float = math.nan  # Holm-adjusted
    comparison: Optional[Comparison] = None  # against the leader, before Holm
    reason: str = ""  # why there is no tier


def _mcnemar_p(discordant_reference: int, discordant_row: int) -> float:
    from statsmodels.stats.contingency_tables import mcnemar

    # only the discordant cells enter the exact test; the concordant ones are irrelevant to it
    return float(mcnemar([[0, discordant_reference], [discordant_row, 0]], exact=True).pvalue)


def mcnemar_comparison(reference_correct: np.ndarray, row_correct: np.ndarray) -> Comparison:
    """McNemar's exact test on two models' per-image correctness (same images, same order)."""
    reference_only = int(np.sum(reference_correct & ~row_correct))
    row_only = int(np.sum(~reference_correct & row_correct))
    return Comparison(_mcnemar_p(reference_only, row_only), reference_only > row_only)


def smallest_detectable_difference(images: int, alpha: float = ALPHA) -> Optional[int]:
    """The fewest images two models must disagree on (all one way) for the exact McNemar test to
    reach p < alpha; None when even every image is not enough."""
    return next((count for count in range(1, images + 1) if _mcnemar_p(0, count) < alpha), None)


def _probability_better(reference: np.ndarray, row: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(a reference seed beats a row seed), ties half; vectorised over leading axes (scipy's resampling)."""
    reference, row = np.moveaxis(reference, axis, -1), np.moveaxis(row, axis, -1)
    pairs = reference[..., :, None] - row[..., None, :]
    return np.mean((pairs > 0) + 0.5 * (pairs == 0), axis=(-2, -1))


def seeds_comparison(reference_accuracies: Sequence[float], row_accuracies: Sequence[float]) -> Comparison:
    """Over seeds: P(reference better) with a percentile bootstrap interval, and a two-sided
    permutation test of that probability (exact: every split of the seeds)."""
    from scipy import stats

    samples = (np.asarray(reference_accuracies, dtype=float), np.asarray(row_accuracies, dtype=float))
    probability = float(_probability_better(*samples))
    low, high = _bootstrap_interval(samples, _probability_better, False, probability)
    centred = lambda x, y, axis=-1: _probability_better(x, y, axis) - 0.5  # noqa: E731 (0 = no difference)
    permutation = stats.permutation_test(samples, centred, permutation_type="independent", vectorized=True,
                                         alternative="two-sided", random_state=np.random.default_rng(0))  # fmt: skip
    return Comparison(float(min(1.0, permutation.pvalue)), probability > 0.5, probability, low, high)


def holm(p_values: Sequence[float]) -> np.ndarray:
    from statsmodels.stats.multitest import multipletests

    if not len(p_values):
        return np.array([])
    return multipletests(list(p_values), alpha=ALPHA, method="holm")[1]


def _accuracies(seeds) -> list[float]:
    return [seed.accuracy for seed in seeds]


def compare(reference: list, row: list) -> Comparison:
    """``reference`` and ``row``: each row's seeds' ``TestPredictions`` (same test sets, checked by
    ``why_not_comparable``). Several reference seeds: over seeds; one: image by image."""
    if len(reference) > 1:
        return seeds_comparison(_accuracies(reference), _accuracies(row))
    return mcnemar_comparison(reference[0].correct, row[0].correct)


def why_not_comparable(leader: list, row: list) -> str:
    if not row:
        return NO_PREDICTIONS
    if {seed.test_set for seed in row} != {seed.test_set for seed in leader}:
        return OTHER_TEST_SET
    return ""


def _worse(comparison: Comparison, adjusted: float) -> bool:
    return adjusted < ALPHA and comparison.reference_better


def assign_tiers(rows: list[list]) -> list[Verdict]:
    """``rows``: per leaderboard row in rank order, its seeds' predictions ([] when none). Tier 1:
    the leader and every row not shown worse than it; then the best-ranked row left opens the next
    tier, and so on (the module says why)."""
    if not rows:
        return []
    if not rows[0]:
        return [Verdict(reason="the leader has " + NO_PREDICTIONS)] * len(rows)
    reasons = [why_not_comparable(rows[0], row) for row in rows]
    remaining = [index for index, reason in enumerate(reasons) if not reason]
    tiers, against_leader, adjusted_vs_leader = {}, {}, {}
    tier = 1
    while remaining:
        reference, others = remaining[0], remaining[1:]
        comparisons = {index: compare(rows[reference], rows[index]) for index in others}
        adjusted = dict(zip(others, holm([comparisons[index].p for index in others])))
        if reference == 0:
            against_leader, adjusted_vs_leader = comparisons, adjusted
        tiers[reference] = tier
        for index in others:
            if not _worse(comparisons[index], adjusted[index]):
                tiers[index] = tier
        remaining = [index for index in others if index not in tiers]
        tier += 1
    return [Verdict(tiers.get(index), adjusted_vs_leader.get(index, math.nan), against_leader.get(index), reasons[index])
            for index in range(len(rows))]  # fmt: skip


def _names(labels: Sequence[str]) -> str:
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _p(value: float) -> str:
    return f"p = {value:.3g}" if value >= 0.001 else "p < 0.001"


def _worse_part(label: str, verdict: Verdict) -> str:
    comparison = verdict.comparison
    if not math.isnan(comparison.probability):
        return f"{label} is worse (P(leader better) = {comparison.probability:.2f} [{comparison.low:.2f}, {comparison.high:.2f}], {_p(verdict.p_vs_leader)})"
    return f"{label} is worse, {_p(verdict.p_vs_leader)}"


def _detectability(rows: list[list]) -> str:
    leader = rows[0]
    if len(leader) > 1:
        from scipy.special import comb

        smallest = 2 / comb(2 * len(leader), len(leader))  # two-sided, both rows with the leader's seed count
        return (f"With {len(leader)} seeds per row, the smallest possible p is {smallest:.3g}"
                + (": add seeds (--repeats) to tell rows apart." if smallest >= ALPHA else "."))  # fmt: skip
    images = len(leader[0].labels)
    if images >= SMALL_TEST_SET:
        return ""
    needed = smallest_detectable_difference(images)
    if needed is None:
        return f"With {images} test images no difference can reach p < {ALPHA}: use a larger test set."
    return (
        f"With {images} test images, two models must differ on at least {needed} images (all one way) "
        f"for a difference to be detectable (exact McNemar, p < {ALPHA}; more after Holm)."
    )


def reading(labels: Sequence[str], rows: list[list], verdicts: list[Verdict]) -> str:
    """One line: who ties with the leader, who is worse (with p), what cannot be compared."""
    if not verdicts:
        return ""
    if verdicts[0].tier is None:
        return f"Tiers unavailable: {verdicts[0].reason}."
    method = "P(leader better) over seeds, permutation test" if len(rows[0]) > 1 else "McNemar's exact test"
    pairs = list(zip(labels, verdicts))[1:]
    tied = [label for label, verdict in pairs if verdict.tier == 1]
    better = [label for label, verdict in pairs if verdict.tier == 1 and verdict.comparison and not verdict.comparison.reference_better
              and verdict.p_vs_leader < ALPHA]  # fmt: skip
    worse = [_worse_part(label, verdict) for label, verdict in pairs if verdict.tier and verdict.tier > 1]
    parts = [f"{_names(tied)} {'is' if len(tied) == 1 else 'are'} tied with the leader {labels[0]}" if tied
             else f"{labels[0]} leads"]  # fmt: skip
    parts += worse
    sentence = "; ".join(parts) + f" ({method}, Holm-adjusted)."
    if better:
        sentence += f" {_names(better)} scored higher on test than the leader chosen on validation."
    missing = [f"{label}: {verdict.reason}" for label, verdict in pairs if verdict.reason]
    if missing:
        sentence += " No tier for " + "; ".join(missing) + "."
    detectability = _detectability(rows) if len(rows) > 1 else ""
    return " ".join(part for part in (sentence, detectability) if part)


# ---- Parity: two one-sided tests ----------------------------------------------------------------


def paired_correctness(first: list, second: list) -> tuple[np.ndarray, np.ndarray]:
    """The two frameworks' per-image correctness, seed by seed where their test sets are equal."""
    by_test_set = {seed.test_set: seed for seed in second}
    pairs = [(seed.correct, by_test_set[seed.test_set].correct) for seed in first if seed.test_set in by_test_set]
    if not pairs:
        return np.array([], dtype=float), np.array([], dtype=float)
    return (np.concatenate([a for a, _ in pairs]).astype(float), np.concatenate([b for _, b in pairs]).astype(float))


def equivalence(first: list, second: list, margin: float = PARITY_MARGIN) -> tuple[str, float]:
    """("equivalent within ±δ ..." or "not shown ...", the TOST p-value) for two rows' seeds."""
    from statsmodels.stats.weightstats import ttost_paired

    if not first or not second:
        return "not tested: " + NO_PREDICTIONS, math.nan
    x, y = paired_correctness(first, second)
    if not len(x):
        return "not tested: the frameworks' test images differ", math.nan
    with np.errstate(divide="ignore", invalid="ignore"):  # identical correctness: zero variance, p = 0 or 1
        p = float(ttost_paired(x, y, -margin, margin)[0])
    difference = 100 * float(np.mean(x - y))
    verdict = "equivalent" if p < ALPHA else "not shown equivalent"
    return (f"{verdict} within ±{100 * margin:g} points (TOST {_p(p)}; difference {difference:+.1f} points "
            f"on {len(x)} paired images)"), p  # fmt: skip


# ---- Pareto front -------------------------------------------------------------------------------


def dominators(accuracy: Sequence[float], cost: Sequence[float]) -> list[Optional[int]]:
    """Per row, the position of the row dominating it (at least as accurate and at most as costly,
    better on one; the most accurate such row), or None: on the front (or no value)."""
    accuracy, cost = np.asarray(accuracy, dtype=float), np.asarray(cost, dtype=float)
    known = ~(np.isnan(accuracy) | np.isnan(cost))
    result: list[Optional[int]] = []
    for i in range(len(accuracy)):
        beating = known & known[i] & (accuracy >= accuracy[i]) & (cost <= cost[i]) & ((accuracy > accuracy[i]) | (cost < cost[i]))
        candidates = np.flatnonzero(beating)
        result.append(int(candidates[np.argmax(accuracy[candidates])]) if len(candidates) else None)
    return result


def pareto_columns(table: pd.DataFrame, accuracy: str, axes: dict[str, str], labels: Sequence[str]) -> pd.DataFrame:
    """``pareto``: the axes (names of ``axes``) on whose front a row is; ``dominated_by``: for the
    others, which row beats it and on which axes."""
    on_front = [[] for _ in range(len(table))]
    beaten_by = [{} for _ in range(len(table))]
    for name, column in axes.items():
        if column not in table or table[column].isna().all():
            continue
        costs = pd.to_numeric(table[column], errors="coerce")
        for i, dominator in enumerate(dominators(table[accuracy], costs)):
            if dominator is not None:
                beaten_by[i].setdefault(labels[dominator], []).append(name)
            elif pd.notna(costs.iloc[i]) and pd.notna(table[accuracy].iloc[i]):
                on_front[i].append(name)
    return pd.DataFrame({
        "pareto": [", ".join(names) for names in on_front],
        "dominated_by": ["; ".join(f"{label} ({', '.join(names)})" for label, names in beaten.items()) for beaten in beaten_by],
    }, index=table.index)  # fmt: skip


def row_labels(models: Sequence[str], frameworks: Sequence[str]) -> list[str]:
    """How the readings name rows: the model alone when every row has the same framework."""
    if len(set(frameworks)) <= 1:
        return [str(model) for model in models]
    return [f"{framework}/{model}" for model, framework in zip(models, frameworks)]


# ---- Deltas between two sweeps (``imagebench compare``) -----------------------------------------

PAIRED, OVER_SEEDS, UNPAIRED = "McNemar, paired images", "permutation test over seeds", "two proportions, other test images"


@dataclass(frozen=True)
class Delta:
    """B's test accuracy minus A's, with its 95% interval and a two-sided p (before Holm)."""

    difference: float
    low: float
    high: float
    p: float
    method: str


def _bootstrap_interval(samples: tuple, statistic, paired: bool, point: float) -> tuple[float, float]:
    from scipy import stats

    # seeded: the same interval every time a report is rebuilt
    with warnings.catch_warnings():  # a degenerate resample (every value equal) has no width
        warnings.simplefilter("ignore")
        interval = stats.bootstrap(samples, statistic, paired=paired, vectorized=True, method="percentile",
                                   n_resamples=BOOTSTRAP_RESAMPLES, random_state=np.random.default_rng(0)).confidence_interval  # fmt: skip
    return tuple(float(value) if np.isfinite(value) else point for value in (interval.low, interval.high))


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(b, axis=axis) - np.mean(a, axis=axis)


def paired_delta(a_correct: np.ndarray, b_correct: np.ndarray) -> Delta:
    """Same test images: McNemar's exact test, and a paired bootstrap interval over the images."""
    difference = float(np.mean(b_correct) - np.mean(a_correct))
    low, high = _bootstrap_interval((a_correct.astype(float), b_correct.astype(float)), _mean_difference, True, difference)
    return Delta(difference, low, high, mcnemar_comparison(a_correct, b_correct).p, PAIRED)


def seeds_delta(a_accuracies: Sequence[float], b_accuracies: Sequence[float]) -> Delta:
    """Several seeds on both sides: the difference of the mean accuracies with a bootstrap interval
    over seeds, and the permutation test of the tiers (``seeds_comparison``)."""
    a, b = np.asarray(a_accuracies, dtype=float), np.asarray(b_accuracies, dtype=float)
    difference = float(b.mean() - a.mean())
    low, high = _bootstrap_interval((a, b), _mean_difference, False, difference)
    return Delta(difference, low, high, seeds_comparison(a, b).p, OVER_SEEDS)


def unpaired_delta(a, b) -> Delta:
    """Different test images (a new dataset version, another split): two independent proportions
    (statsmodels' score test and Newcombe's interval)."""
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep

    counts = [(int(seed.correct.sum()), len(seed.labels)) for seed in (b, a)]  # B first: the difference is B - A
    arguments = (counts[0][0], counts[0][1], counts[1][0], counts[1][1])
    with np.errstate(divide="ignore", invalid="ignore"):  # both perfect: zero variance, p = 1
        p = float(test_proportions_2indep(*arguments, method="score").pvalue)
    low, high = confint_proportions_2indep(*arguments, method="newcomb")
    difference = b.accuracy - a.accuracy
    return Delta(difference, float(low), float(high), 1.0 if math.isnan(p) else p, UNPAIRED)


def delta(a_seeds: list, b_seeds: list) -> Delta:
    """``a_seeds``, ``b_seeds``: one configuration's seeds' ``TestPredictions`` in each sweep. Both
    with several seeds: over seeds; else the first pair of seeds on the same test images image by
    image; else (other test images) two independent proportions."""
    if len(a_seeds) > 1 and len(b_seeds) > 1:
        return seeds_delta(_accuracies(a_seeds), _accuracies(b_seeds))
    by_test_set = {seed.test_set: seed for seed in b_seeds}
    shared = next(((seed, by_test_set[seed.test_set]) for seed in a_seeds if seed.test_set in by_test_set), None)
    if shared:
        return paired_delta(shared[0].correct, shared[1].correct)
    return unpaired_delta(a_seeds[0], b_seeds[0])
