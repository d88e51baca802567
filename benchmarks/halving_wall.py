"""Benchmark 7, halving vs grid wall time: the batch tutorial's sweep (the 52-trial grid, cnn/torch on the digits
at 32 px, 9 epochs) run whole by ``imagebench sweep`` and by ``--strategy halving``, one after the
other in the same throw-away project and store, as a user runs them (CLI, one worker, warm kernel).

Besides the two wall times it reports, from the trials' own logs, the jobs (one per notebook
execution: halving runs a surviving trial once per rung), the trial-epochs and the seconds spent in
epochs, so the per-job fixed cost (wall time not spent in an epoch, over jobs) is measured, not guessed;
and whether both sweeps chose the same winner (the leaderboard's rule).

    python benchmarks/halving_wall.py [--epochs 9] [--size 32] [--eta 3] [--framework torch] [--model cnn]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import epoch_seconds, scratch_workspace, write_record  # noqa: E402



def sweep(project: Path, experiment: str, args, strategy: list[str]) -> float:
    command = [str(Path(sys.executable).parent / "imagebench"), "sweep", "params/grid52.yaml", "--models", args.model,
               "--frameworks", args.framework, "--set", f"epochs={args.epochs}", "--set", f"image_size={args.size}",
               "--experiment", experiment, *strategy]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=project, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    print(done.stdout.strip().splitlines()[-1])
    return seconds


def job_costs(project: Path, experiment: str, wall: float) -> dict:
    """Jobs, trial-epochs and epoch seconds from the trials' logs; the rest of the wall time per job."""
    runs = project / "results" / experiment / "runs"
    logs = sorted(log for log in runs.glob("*.log") if log.with_suffix(".ipynb").exists())  # a job's, not a worker's
    epochs = [seconds for log in logs for seconds in epoch_seconds(log)]
    return {"wall_seconds": wall, "jobs": len(logs), "trial_epochs": len(epochs), "epoch_seconds": sum(epochs),
            "fixed_seconds_per_job": (wall - sum(epochs)) / max(1, len(logs))}  # fmt: skip


def winner(experiment: str) -> dict:
    from imagebench.report import leaderboard

    best = leaderboard.select_leaders(leaderboard.trial_runs(experiment)).iloc[0]
    return {"trial": best["trial"], "val_accuracy": float(best["metrics.best/val_accuracy"]),
            "test_accuracy": float(best["metrics.test/accuracy"])}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="torch")
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--eta", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagebench-bench-") as temp:
        project = scratch_workspace(Path(temp))
        names = {"grid": f"bench-{args.model}-grid", "halving": f"bench-{args.model}-halving"}
        walls = {"grid": sweep(project, names["grid"], args, []),
                 "halving": sweep(project, names["halving"], args, ["--strategy", "halving", "--eta", str(args.eta)])}
        costs = {name: job_costs(project, experiment, walls[name]) for name, experiment in names.items()}
        winners = {name: winner(experiment) for name, experiment in names.items()}
    for name, cost in costs.items():
        print(f"{name}: {cost['wall_seconds']:.1f} s, {cost['jobs']} jobs, {cost['trial_epochs']} trial-epochs "
              f"({cost['epoch_seconds']:.1f} s in epochs), fixed cost {cost['fixed_seconds_per_job']:.2f} s per job; "
              f"winner {winners[name]['trial']} (val {winners[name]['val_accuracy']:.4f}, test {winners[name]['test_accuracy']:.4f})")
    record = write_record(
        "halving_wall", [walls["grid"]], [walls["halving"]], "seconds", "<= 0.4x the grid's wall time (ratio >= 2.5), same winner",
        higher_is_better=False, packages=["torch", "timm", "mlflow", "papermill"],
        notes=f"params/grid52.yaml, {args.model}/{args.framework}, {args.epochs} epochs, {args.size} px, halving eta {args.eta}; "
              "one worker (warm kernel), sqlite store; baseline = grid, ours = halving",
        extra={"halving_over_grid": walls["halving"] / walls["grid"], "costs": costs, "winners": winners,
               "same_winner": winners["grid"]["trial"] == winners["halving"]["trial"]},
    )
    print(f"halving / grid wall time: {record['halving_over_grid']:.2f}x; same winner: {record['same_winner']}")


if __name__ == "__main__":
    main()
