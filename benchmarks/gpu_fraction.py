"""Small trials sharing a GPU: trials per hour of a demo-sized cnn sweep at 1, 0.5 and 0.25 GPU
per trial (``--gpus-per-trial``), on a Ray cluster started here on this machine's GPUs.

Each fraction runs the same sweep whole (`imagebench sweep --executor ray`, a fresh project and
store each time, the cluster already up as a user's is): digits at 64 px, torch cnn, one
configuration per learning rate. The baseline is one GPU per trial; ours is the fastest fraction;
every fraction's figures are in the JSON's ``fractions``. Meant for a lent GPU machine;
``--declare-gpus N`` runs it on a CPU-only machine (Ray then places by the declared count, which
checks the script, not the speed).

    python benchmarks/gpu_fraction.py [--fractions 1 0.5 0.25] [--trials 16] [--epochs 10] [--declare-gpus N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep every node on 127.0.0.1
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import scratch_workspace, write_record  # noqa: E402


def gpu_count() -> int:
    """The GPUs torch sees, asked in a subprocess (this process must not hold CUDA before Ray starts)."""
    done = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"], capture_output=True, text=True)
    return int(done.stdout.strip() or 0)


def sweep_file(project: Path, trials: int, epochs: int) -> Path:
    rates = ", ".join(f"{0.0005 * (index + 1):.4f}" for index in range(trials))
    path = project / "params" / "gpu-fraction.yaml"
    path.write_text("experiment: gpu-fraction\n"
                    "base: {dataset: digits, image_size: 64, batch_size: 64, val_fraction: 0.15, test_fraction: 0.15, "
                    f"epochs: {epochs}, early_stopping_patience: 0, framework: torch, model: cnn}}\n"
                    f"matrix: {{learning_rate: [{rates}]}}\n")  # fmt: skip
    return path


def one_sweep(address: str, fraction: float, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-fraction-") as folder:
        project = scratch_workspace(Path(folder))
        path = sweep_file(project, args.trials, args.epochs)
        command = [sys.executable, "-m", "imagebench.cli", "sweep", str(path), "--executor", "ray", "--address", address,
                   "--gpus-per-trial", f"{fraction:g}", "--no-models", "--no-leaderboard", "--quiet"]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=args.timeout)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the sweep at {fraction:g} GPU per trial failed (exit {done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return {"gpus_per_trial": fraction, "seconds": round(seconds, 2), "trials_per_hour": round(args.trials * 3600 / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[1, 0.5, 0.25])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--declare-gpus", type=int, help="GPUs the node declares on a machine without any (a dry run)")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    gpus = args.declare_gpus if args.declare_gpus is not None else gpu_count()
    if not gpus:
        raise SystemExit("no GPU found: run this on a GPU machine, or pass --declare-gpus 1 to check the script on a CPU")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": os.cpu_count(), "num_gpus": gpus, "include_dashboard": False,
                                                             "node_ip_address": "127.0.0.1"})  # fmt: skip
    try:
        results = [one_sweep(cluster.address, fraction, args) for fraction in args.fractions]
    finally:
        cluster.shutdown()
    for result in results:
        print(f"{result['gpus_per_trial']:g} GPU per trial: {result['seconds']:.0f} s, {result['trials_per_hour']:.0f} trials/hour")
    whole = [result["trials_per_hour"] for result in results if result["gpus_per_trial"] == 1] or [results[0]["trials_per_hour"]]
    best = max(result["trials_per_hour"] for result in results)
    write_record("gpu_fraction", whole, [best], "trials per hour", "several small trials on one GPU finish more trials per hour than one",
                 higher_is_better=True, packages=["ray", "torch"],
                 notes=f"{args.trials} torch cnn trials (digits, 64 px, {args.epochs} epochs), {gpus} GPU(s)"
                       + (" DECLARED on a machine without one: a check of the script, not a speed" if args.declare_gpus is not None else ""),
                 extra={"fractions": results})  # fmt: skip


if __name__ == "__main__":
    main()
