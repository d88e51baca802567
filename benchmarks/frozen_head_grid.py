"""Benchmark 2, frozen-backbone head grid: the 52 trials of params/grid52.yaml on one frozen
EfficientNet-B0 (head 512-256-128-64), total wall time with the feature cache vs without.

Both runs go through ``run_trial`` (the suite's own path: data, model, fit, test, MLflow record),
in this process, against a throw-away MLflow store; without the cache every epoch of every trial
runs the backbone over every image, with it the backbone runs once and the 52 heads train on the
cached pooled features.

    python benchmarks/frozen_head_grid.py --framework torch|keras [--configs 52] [--epochs 5]
        [--size 64] [--max-per-class N]

``weights: none`` (no download here): a random frozen backbone costs the same time as an ImageNet one.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, scratch_workspace, timed, write_record  # noqa: E402


def head_trials(framework: str, configs: int, epochs: int, size: int, max_per_class: int):
    from imagebench.sweep.grid import plan_sweep

    overrides = {"framework": framework, "model": "efficientnet_b0", "freeze_backbone": True, "epochs": epochs,
                 "image_size": size, "max_per_class": max_per_class, "experiment": "bench-frozen-head"}
    plan = plan_sweep(REPO / "params" / "grid52.yaml", overrides, axes={"framework": [framework]})
    return [trial.params for trial in plan.trials[:configs]]


def run_grid(trials, feature_cache: bool) -> float:
    from imagebench.training.features import ENV_FEATURE_CACHE
    from imagebench.trial import run_trial

    os.environ[ENV_FEATURE_CACHE] = "on" if feature_cache else "off"

    def all_trials() -> None:
        for params in trials:
            run_trial(params, verbose=False)

    return timed(all_trials)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("keras", "torch"), required=True)
    parser.add_argument("--configs", type=int, default=52)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--max-per-class", type=int, default=None, help="cap images per class (default: all 1,797 digits)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagebench-bench-") as temp:
        scratch_workspace(Path(temp))
        trials = head_trials(args.framework, args.configs, args.epochs, args.size, args.max_per_class)
        run_trial_warmup = trials[:1]
        run_grid(run_trial_warmup, feature_cache=False)  # imports, graph building: not part of either side
        baseline = run_grid(trials, feature_cache=False)
        ours = run_grid(trials, feature_cache=True)  # includes computing the features once
    packages = ["tensorflow-cpu", "tensorflow", "keras"] if args.framework == "keras" else ["torch", "timm"]
    write_record(
        f"frozen_head_grid_{args.framework}", [baseline], [ours], "seconds", ">= 10x", higher_is_better=False,
        packages=packages,
        notes=f"{len(trials)} configs of params/grid52.yaml, efficientnet_b0 frozen (weights none), head 512-256-128-64, "
              f"{args.epochs} epochs, {args.size} px, digits (max_per_class {args.max_per_class}); one run of each "
              "side (each is 52 trials); ours includes computing the features once",
    )


if __name__ == "__main__":
    main()
