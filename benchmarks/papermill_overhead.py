"""Benchmark 4, papermill overhead per trial: the same short trial as a sweep runs it (sent to a
worker process that executes notebooks/train.ipynb with papermill) vs ``run_trial`` in this
already-warm process. The difference is what each trial pays for papermill and its kernel.

A worker keeps its kernel warm between trials of one framework (the sweep's default): its first
trial pays the kernel start and the imports once, every later one only papermill's execution.
Both are reported, and ``--fresh-kernel`` (a new kernel per trial) is measured too. Where a cold
start's time goes is measured in fresh processes: Python + the worker's imports, the kernel's
start, the trial's imports (imagebench, the framework, MLflow), and opening the MLflow store.

    python benchmarks/papermill_overhead.py --framework torch|keras [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, scratch_workspace, timed, write_record  # noqa: E402

FRAMEWORK_IMPORT = {"torch": "imagebench.backends.torch_backend", "keras": "imagebench.backends.keras_backend"}


def short_trial(framework: str) -> dict:
    return {"framework": framework, "model": "cnn", "image_size": 32, "epochs": 1, "max_per_class": 60,
            "experiment": "bench-papermill-overhead"}  # fmt: skip


class Worker:
    """The sweep's worker process (``executors.local.WorkerProcess``), sent jobs as the scheduler sends them."""

    def __init__(self, folder: Path, project: Path, fresh_kernel: bool = False):
        from imagebench.core import contract
        from imagebench.training.resources import available_cores, thread_environment
        from imagebench.executors.local import WorkerProcess

        env = {**os.environ, **thread_environment(available_cores()), contract.ENV_ROOT: str(project), "PYTHONUNBUFFERED": "1"}
        self.folder, self.jobs = folder, 0
        self.worker = WorkerProcess.start(project, env, folder / f"worker-{fresh_kernel}.log", fresh_kernel)

    def trial_seconds(self, values: dict) -> float:
        """One trial from the moment the job is sent until the worker reports it done."""
        from imagebench import store
        from imagebench.core import contract
        from imagebench.core.params import make_params
        from imagebench.executors.worker import status_file

        params = make_params(values)
        self.jobs += 1
        run_id = store.create_trial_run(params.experiment, f"worker-{self.jobs}", {}, None)
        params_file = self.folder / f"trial-{self.jobs}.params.json"
        params_file.write_text(json.dumps(params.model_dump()), encoding="utf-8")
        output = self.folder / f"trial-{self.jobs}-{self.worker.process.pid}.ipynb"
        started = time.perf_counter()
        self.worker.send(params_file, run_id, output, {contract.ENV_RUN_ID: run_id})
        while not status_file(output).exists():
            if not self.worker.alive():
                raise SystemExit(f"the worker exited with status {self.worker.process.returncode}; see {self.worker.log}")
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        if status_file(output).read_text().strip() != "0" or store.client().get_run(run_id).info.status != "FINISHED":
            raise SystemExit(f"the worker's trial failed; see {output}")
        return seconds

    def close(self) -> None:
        self.worker.close()


def fresh_process_seconds(code: str) -> float:
    return timed(lambda: subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True))


def kernel_start_seconds() -> float:
    code = "from jupyter_client.manager import start_new_kernel as s; m, c = s(kernel_name='python3'); c.stop_channels(); m.shutdown_kernel(now=True)"
    return fresh_process_seconds(code)


def breakdown(framework: str) -> dict[str, float]:
    """Fresh-process costs: each includes Python's own start (~0.05 s), shown separately."""
    python = fresh_process_seconds("pass")
    return {
        "python_start": python,
        "worker_imports": fresh_process_seconds("import imagebench.executors.worker, papermill"),
        "kernel_start": kernel_start_seconds(),
        "trial_imports": fresh_process_seconds(f"import imagebench.trial, {FRAMEWORK_IMPORT[framework]}"),
        "mlflow_store_open": fresh_process_seconds(
            "from imagebench import store; store.client().search_experiments(max_results=1)"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("keras", "torch"), required=True)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    values = short_trial(args.framework)
    with tempfile.TemporaryDirectory(prefix="imagebench-bench-") as temp:
        project = scratch_workspace(Path(temp))
        from imagebench.trial import run_trial

        run_trial(values, verbose=False)  # warm: imports, store created, decode cache built
        in_process = [timed(lambda: run_trial(values, verbose=False)) for _ in range(args.repeats)]
        warm_worker = Worker(Path(temp), project)
        cold_start = warm_worker.trial_seconds(values)  # the worker's first trial starts its kernel
        warm = [warm_worker.trial_seconds(values) for _ in range(args.repeats)]
        warm_worker.close()
        fresh_worker = Worker(Path(temp), project, fresh_kernel=True)
        fresh = [fresh_worker.trial_seconds(values) for _ in range(args.repeats)]
        fresh_worker.close()
        print(f"in-process {statistics.median(in_process):.2f} s; worker: first trial {cold_start:.2f} s, then "
              + ", ".join(f"{value:.2f}" for value in warm) + " s (warm kernel); --fresh-kernel "
              + ", ".join(f"{value:.2f}" for value in fresh) + " s")
        parts = breakdown(args.framework)
    overhead = statistics.median(warm) - statistics.median(in_process)
    print("fresh-process costs (s): " + ", ".join(f"{name} {value:.2f}" for name, value in parts.items()))
    packages = ["papermill", "nbclient", "ipykernel", "mlflow"] + (["tensorflow-cpu", "keras"] if args.framework == "keras" else ["torch", "timm"])
    write_record(
        f"papermill_overhead_{args.framework}", in_process, warm, "seconds", "<= 3 s beyond in-process",
        higher_is_better=False, packages=packages,
        notes="baseline = run_trial in a warm process, ours = the same trial sent to a sweep worker (papermill, the "
              "worker's kernel kept warm) timed from sending the job to its status file; cnn, 32 px, 1 epoch, 60 images "
              "per class; ratio < 1 is expected: the figure is overhead_seconds",
        extra={"overhead_seconds": overhead, "first_trial_of_a_worker_seconds": cold_start,
               "fresh_kernel_seconds": fresh, "fresh_kernel_overhead_seconds": statistics.median(fresh) - statistics.median(in_process),
               "fresh_process_breakdown_seconds": parts},
    )
    print(f"papermill overhead per trial: {overhead:.2f} s (goal <= 3 s)")


if __name__ == "__main__":
    main()
