"""Ray overhead: the same 12 short trials through the local executor with two workers and through a
two-node Ray cluster on this machine (two trials at once in both), as the user runs them.

Each run is a whole `imagebench sweep` in a fresh process against its own throw-away project and
MLflow store (what the user waits for: planning, the data check, every trial, the summary); the
Ray cluster (Ray's multi-node ``cluster_utils.Cluster`` on 127.0.0.1: a head that runs no trial
and two nodes of one CPU) is started once, outside the timing, as a user's cluster already runs.
Goal: Ray adds at most 1 s per trial.

    python benchmarks/ray_overhead.py [--trials 12] [--epochs 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep every node on 127.0.0.1
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, timed, write_record  # noqa: E402

BIN = Path(sys.executable).parent


def sweep_file(project: Path, trials: int, epochs: int) -> Path:
    rates = ", ".join(f"{0.0005 * (index + 1):.4f}" for index in range(trials))
    path = project / "params" / "ray-overhead.yaml"
    path.write_text("experiment: ray-overhead\n"
                    "base: {dataset: digits, image_size: 32, batch_size: 64, max_per_class: 30, val_fraction: 0.25, "
                    f"test_fraction: 0.25, epochs: {epochs}, early_stopping_patience: 0, framework: torch, model: cnn}}\n"
                    f"matrix: {{learning_rate: [{rates}]}}\n")  # fmt: skip
    return path


def timed_sweep(scratch: Path, name: str, trials: int, epochs: int, executor_args: list[str]) -> float:
    project = scratch / name
    shutil.copytree(REPO / "notebooks", project / "notebooks")
    shutil.copytree(REPO / "params", project / "params")
    env = {**os.environ, "IMAGEBENCH_ROOT": str(project), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    command = [str(BIN / "imagebench"), "sweep", str(sweep_file(project, trials, epochs)), "--no-leaderboard", "--quiet",
               *executor_args]  # fmt: skip

    def run() -> None:
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        print("   ", done.stdout.strip().splitlines()[-1][:160], flush=True)

    seconds = timed(run)
    print(f"  {name}: {seconds:.1f} s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, "node_ip_address": "127.0.0.1"})
    for _ in range(2):
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
    local, ray = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="imagebench-bench-ray-") as temp:
            os.environ["IMAGEBENCH_CACHE"] = str(Path(temp) / "cache")  # the same warm decode cache for both
            for repeat in range(args.repeats):  # interleaved: drift on the machine hits both alike
                local.append(timed_sweep(Path(temp), f"local-{repeat}", args.trials, args.epochs, ["--workers", "2"]))
                ray.append(timed_sweep(Path(temp), f"ray-{repeat}", args.trials, args.epochs,
                                       ["--executor", "ray", "--address", cluster.address, "--workers", "2"]))  # fmt: skip
    finally:
        cluster.shutdown()
    added = (statistics.median(ray) - statistics.median(local)) / args.trials
    write_record(
        "ray_overhead", local, ray, "s per sweep", "Ray adds <= 1 s per trial over the local executor", higher_is_better=False,
        packages=["ray", "mlflow", "papermill", "torch"],
        notes=f"{args.trials} torch cnn trials (digits 32 px, {args.epochs} epochs), two at once: local --workers 2 vs a "
              "2-node Ray cluster on 127.0.0.1 (1 CPU per node, head with 0 CPUs), one thread per trial in both",
        extra={"added_seconds_per_trial": added, "trials": args.trials, "epochs": args.epochs},
    )  # fmt: skip
    print(f"Ray adds {added:+.2f} s per trial (goal <= 1 s)")


if __name__ == "__main__":
    main()
