"""Benchmark 9, the GPU speed switches in a real sweep: a short resnet50 sweep run whole by
``imagebench sweep`` (one worker, warm kernel, sqlite store) over every combination of
``mixed_precision``, ``channels_last`` and ``compile``, from scratch on the digits at 224 px, so that
each switch's effect is read from trials as a user runs them: seconds per epoch after the first,
the first epoch (``compile`` pays its compilation there), the whole trial and its accuracy.

Meant for a lent GPU machine (on a CPU ``mixed_precision`` means bfloat16 and the figures say little).
The baseline is the trial with every switch off; ours is the trial with all three on; every
combination is in the JSON's ``trials``.

    python benchmarks/gpu_sweep.py [--framework torch] [--model resnet50] [--size 224] [--epochs 4]
        [--batch-size 64] [--on compile ...] [--timeout 420]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import epoch_seconds, scratch_workspace, write_record  # noqa: E402

# compile first in the matrix: the four trials without it (seconds each) run before the four that
# compile (a minute or more each), so a sweep stopped by --timeout still has the eager ones
SWITCHES = ("compile", "mixed_precision", "channels_last")


def sweep_file(project: Path, args) -> Path:
    spec = {"experiment": "gpu-switches",
            "base": {"dataset": "digits", "framework": args.framework, "model": args.model, "image_size": args.size,
                     "weights": "none", "freeze_backbone": False, "epochs": args.epochs, "batch_size": args.batch_size,
                     "early_stopping_patience": 0, "max_per_class": None, "augment": "none"},
            "matrix": {switch: [True] if switch in args.on else [False, True] for switch in SWITCHES}}  # fmt: skip
    path = project / "params" / "gpu_switches.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def run_sweep(project: Path, path: Path, timeout: float) -> tuple[float, str]:
    command = [sys.executable, "-m", "imagebench.cli", "sweep", str(path), "--workers", "1", "--no-leaderboard"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as stopped:  # report the trials that finished
        output = f"{stopped.stdout or ''}{stopped.stderr or ''}\n(sweep stopped after --timeout {timeout:.0f}s)"
    return time.perf_counter() - started, output


def trial_rows(project: Path) -> list[dict]:
    """One row per trial run: its switches, epoch seconds (from its log), train seconds, accuracy."""
    from imagebench import store

    rows = []
    for run in store.search_trial_runs("gpu-switches"):
        trial, metrics, info = run.data.tags[store.TAG_TRIAL], run.data.metrics, run.info
        epochs = epoch_seconds(project / "results" / "gpu-switches" / "runs" / f"{trial}.log")
        rows.append({"trial": trial, **{switch: run.data.params.get(switch) == "True" for switch in SWITCHES},
                     "status": info.status, "first_epoch_seconds": epochs[0] if epochs else None, "later_epoch_seconds": epochs[1:],
                     "run_seconds": (info.end_time - info.start_time) / 1000 if info.end_time else None,
                     "train_seconds": metrics.get("cost/train_seconds"), "val_accuracy": metrics.get("best/val_accuracy"),
                     "test_accuracy": metrics.get("test/accuracy")})  # fmt: skip
    return sorted(rows, key=lambda row: row["trial"])


def label(row: dict) -> str:
    return "+".join(switch for switch in SWITCHES if row[switch]) or "none"


def later_epochs(by_label: dict[str, dict], name: str) -> list[float]:
    """The epochs after the first of the trial with those switches; NaN when it did not finish."""
    return by_label[name]["later_epoch_seconds"] if name in by_label else [float("nan")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", default="torch")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--on", nargs="+", choices=SWITCHES, default=[], help="switches kept on in every trial (a sweep of the rest)")
    parser.add_argument("--timeout", type=float, default=420, help="seconds the sweep may run; the trials finished by then are reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagebench-bench-") as temp:
        project = scratch_workspace(Path(temp))
        wall, output = run_sweep(project, sweep_file(project, args), args.timeout)
        print(output.strip().splitlines()[-1] if output.strip() else "(no output)")
        rows = trial_rows(project)
    print(f"{'switches':<36} {'status':<9} {'1st epoch':>9} {'later epochs (median)':>22} {'run s':>7} {'val acc':>8}")
    for row in rows:
        later = statistics.median(row["later_epoch_seconds"]) if row["later_epoch_seconds"] else float("nan")
        print(f"{label(row):<36} {row['status']:<9} {row['first_epoch_seconds'] or float('nan'):>9.1f} {later:>22.2f} "
              f"{row['run_seconds'] or float('nan'):>7.1f} {row['val_accuracy'] or float('nan'):>8.4f}")
    by_label = {label(row): row for row in rows if row["later_epoch_seconds"]}
    all_on = "+".join(SWITCHES)
    if "none" not in by_label or all_on not in by_label:
        print(f"the all-off and all-on trials did not both finish in {wall:.0f}s: the record keeps the trials that did")
    write_record(
        f"gpu_sweep_{args.framework}_{args.model}" + "".join(f"-{switch}" for switch in args.on),
        later_epochs(by_label, "none"), later_epochs(by_label, all_on), "seconds per epoch",
        "report: what the switches buy in a sweep", higher_is_better=False, packages=["torch", "timm", "mlflow", "papermill"],
        notes=f"imagebench sweep, {args.model}/{args.framework} from scratch, digits at {args.size} px, batch {args.batch_size}, "
              f"{args.epochs} epochs, one worker; baseline = epochs after the first with every switch off (the sweep's first "
              "trial: its first epoch and run time also carry the kernel's first CUDA use), ours = all three on",
        extra={"sweep_wall_seconds": wall, "trials": rows, "sweep_output_tail": output[-2000:]},
    )


if __name__ == "__main__":
    main()
