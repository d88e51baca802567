"""Benchmark 8, figures off the trial's path: would drawing a trial's two figures in another process,
while the next trial trains, save wall time on this machine? (The question behind issue 13's
"figures drawn while the next trial trains".)

A run of cached frozen-backbone head trials (benchmark 2's configurations, the feature cache warm)
through ``run_trial`` in this process, twice per round: figures drawn in the trial as the product
does (baseline), and figures handed to a separate, already started process that draws the same
PNGs while the following trials train (ours; the time to collect the last ones is included). Only
when the framework leaves a core idle can the second process save anything.

    python benchmarks/figure_overlap.py [--framework torch] [--trials 15] [--rounds 2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import scratch_workspace, timed, write_record  # noqa: E402


def draw(curves: dict, best_epoch: int, confusion, class_names: list[str], title: str) -> list[bytes]:
    from imagebench.core import plots

    return [plots.png_bytes(plots.learning_curves(curves, title, best_epoch)),
            plots.png_bytes(plots.confusion_matrix(confusion, class_names, title))]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("keras", "torch"), default="torch")
    parser.add_argument("--trials", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagebench-bench-") as temp:
        scratch_workspace(Path(temp))
        from frozen_head_grid import head_trials

        from imagebench import trial

        configs = head_trials(args.framework, 52, 5, 64, None)
        trial.run_trial(configs[0], verbose=False)  # computes the features: every later trial is a cache hit
        drawer = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        drawer.submit(draw, {}, 0, np.ones((1, 1), int), ["a"], "warm-up").result()  # its imports are not part of either side
        drawn_in_trial = trial.TrialResult.draw_figures
        pending = []

        def handed_over(result) -> dict:
            pending.append(drawer.submit(draw, result.curves, int(result.metrics.get("best_epoch", 0)), result.confusion,
                                         result.class_names, f"{result.params.framework} / {result.params.model}"))  # fmt: skip
            return {}

        def trials_then_figures() -> None:
            for params in configs[1 : 1 + args.trials]:
                trial.run_trial(params, verbose=False)
            for future in pending:
                future.result()
            pending.clear()

        baseline, ours = [], []
        for _round in range(args.rounds):
            trial.TrialResult.draw_figures = drawn_in_trial
            baseline.append(timed(trials_then_figures))
            trial.TrialResult.draw_figures = handed_over
            ours.append(timed(trials_then_figures))
            print(f"figures in the trial {baseline[-1]:.2f} s, in another process {ours[-1]:.2f} s")
        trial.TrialResult.draw_figures = drawn_in_trial
        drawer.shutdown()
    packages = ["matplotlib", "mlflow"] + (["torch"] if args.framework == "torch" else ["tensorflow-cpu", "keras"])
    write_record(
        f"figure_overlap_{args.framework}", baseline, ours, "seconds", "report (> 1: drawing elsewhere saves time)",
        higher_is_better=False, packages=packages,
        notes=f"{args.trials} cached frozen EfficientNet-B0 head trials (benchmark 2's configs 2..{args.trials + 1}), 5 epochs, "
              "64 px; baseline: the two figures drawn in each trial; ours: drawn by a second process while the next trials train",
    )


if __name__ == "__main__":
    main()
