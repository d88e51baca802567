"""Issue 13 item 3, the finding: where a kept Keras kernel grows per trial.

A TensorFlow ``FuncGraph`` traced for training stays alive after its model, optimizer and
``tf.function`` are deleted (and ``keras.backend.clear_session()`` and ``gc.collect()`` ran) whenever
a Keras optimizer's ``apply_gradients`` runs inside the traced function; a forward pass or a plain
``Variable.assign_sub`` update inside the same kind of function leaves nothing. ``model.fit`` does
exactly that, so every trial in one process kept its training graph (80-350 MB for EfficientNet-B0).

The cause: tracing a ``tf.custom_gradient`` function registers its gradient in TensorFlow's
process-wide gradient registry (``CustomGradient-N``), never removed, and each entry keeps its graph
alive. Keras' optimizer traces one (``ReplicaContext.all_reduce`` sums gradients across replicas even
under the default single-replica strategy), and EfficientNet's ~50 swish/SiLU activations one each.
The fix (``keras_backend._forget_custom_gradients``, run by ``configure`` at the start of every trial)
drops those entries once the last trial's models are gone.

This script measures both sides, each in a fresh process: Keras as installed, and with imagebench's
Keras backend loaded. It counts the surviving graphs per variant (seconds, no data) and, with
``--rss-trials N``, the resident memory after each of N EfficientNet-B0 ``model.fit`` runs in one
process. JSON in results/benchmarks/keras_graph_leak.json.

    python benchmarks/keras_graph_leak.py [--rss-trials 8]
    python benchmarks/keras_graph_leak.py --trials 20   # RSS over 20 whole trials in one process
                                                        # (keras_kernel_rss.json)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT_DIR, machine  # noqa: E402

from imagebench.backends import load_tensorflow  # noqa: E402

load_tensorflow()
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from imagebench.store import package_versions  # noqa: E402


def surviving_graphs() -> int:
    gc.collect()
    return sum(1 for item in gc.get_objects() if type(item).__name__ == "FuncGraph")


def _variant(kind: str) -> None:
    weights = tf.Variable(tf.ones((4, 4)))
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build([weights])

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.matmul(x, weights))
        if kind == "keras optimizer in tf.function":
            optimizer.apply_gradients([(tape.gradient(loss, weights), weights)])
        elif kind == "assign_sub in tf.function":
            weights.assign_sub(0.1 * tape.gradient(loss, weights))
        return loss

    step(tf.ones((2, 4)))


def graph_counts(start_trial, repeats: int = 3) -> dict[str, list[int]]:
    counts = {}
    for kind in ("forward only", "assign_sub in tf.function", "keras optimizer in tf.function"):
        start_trial(None)
        start = surviving_graphs()
        counts[kind] = []
        for _ in range(repeats):
            _variant(kind)
            start_trial(None)
            counts[kind].append(surviving_graphs() - start)
    return counts


def fit_rss(trials: int, start_trial) -> list[float]:
    import psutil

    from imagebench.backends.keras_models import build_model
    from imagebench.core.params import make_params

    params = make_params(framework="keras", model="efficientnet_b0", image_size=64, weights="none")
    rng = np.random.default_rng(0)
    images, labels = rng.uniform(0, 255, (256, 64, 64, 3)).astype(np.float32), rng.integers(0, 10, 256)
    rss = []
    for _ in range(trials):
        start_trial(params)
        model = build_model(params, 10)
        model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
        model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
        del model
        keras.backend.clear_session()
        gc.collect()
        rss.append(psutil.Process().memory_info().rss / 2**20)
        print(f"fit {len(rss)}: {rss[-1]:.0f} MB, {surviving_graphs()} graphs alive", flush=True)
    return rss


def trial_rss(trials: int, side: str) -> list[float]:
    """RSS after each of ``trials`` whole trials (``run_trial``: benchmark 2's frozen EfficientNet-B0 at
    64 px, feature cache off) in this process; on the ``keras`` side without the fix."""
    import os
    import tempfile

    import psutil

    from imagebench.backends import keras_backend
    from imagebench.trial import run_trial

    if side == "keras":
        keras_backend._forget_custom_gradients = lambda: None  # the baseline: TensorFlow's registry as it is
    scratch = tempfile.mkdtemp(prefix="imagebench-leak-")
    os.environ.update({"IMAGEBENCH_CACHE": f"{scratch}/cache", "MLFLOW_TRACKING_URI": f"sqlite:///{scratch}/mlflow.db",
                       "IMAGEBENCH_ROOT": scratch, "IMAGEBENCH_FEATURE_CACHE": "off"})  # fmt: skip
    rss = []
    for index in range(trials):
        run_trial({"framework": "keras", "model": "efficientnet_b0", "freeze_backbone": True, "weights": "none", "epochs": 2,
                   "image_size": 64, "max_per_class": 60, "seed": index, "experiment": "leak"}, verbose=False)  # fmt: skip
        gc.collect()
        rss.append(psutil.Process().memory_info().rss / 2**20)
        print(f"trial {index + 1}: {rss[-1]:.0f} MB", flush=True)
    return rss


def one_side(side: str, rss_trials: int, trials: int = 0) -> dict:
    """Measured in this process between runs: ``keras``: clear_session (as Keras advises); ``imagebench``:
    the Keras backend's ``configure``, what every trial starts with (clear_session and the fix)."""
    def start_trial(params) -> None:
        if side == "keras":
            keras.backend.clear_session()
        else:
            from imagebench.backends import keras_backend
            from imagebench.core.params import make_params

            keras_backend.configure(params or make_params(framework="keras"))  # what every trial starts with

    if trials:
        return {"efficientnet_b0_trial_rss_mb": trial_rss(trials, side)}
    result = {"graphs_alive_after_rounds": graph_counts(start_trial)}
    if rss_trials:
        rss = fit_rss(rss_trials, start_trial)
        result["efficientnet_b0_fit_rss_mb"] = rss
        result["mb_per_fit"] = (rss[-1] - rss[0]) / max(1, len(rss) - 1)
    return result


SIDES = ("keras", "imagebench")  # each measured in a fresh process: the fix is process-wide once loaded


def measure_side(side: str, *options: str) -> dict:
    import subprocess

    done = subprocess.run([sys.executable, __file__, "--side", side, *options], capture_output=True, text=True, check=True)
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])


def new_record(name: str, command: str) -> dict:
    return {"name": name, "machine": machine(), "versions": package_versions(["tensorflow-cpu", "tensorflow", "keras"]), "command": command}


def write(record: dict) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    (OUT_DIR / f"{record['name']}.json").write_text(json.dumps(record, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rss-trials", type=int, default=0)
    parser.add_argument("--trials", type=int, default=0, help="instead: RSS over N whole Keras trials in one process, each side")
    parser.add_argument("--side", choices=SIDES, help="(internal) measure one side in this process")
    args = parser.parse_args()
    if args.side:
        print("RESULT " + json.dumps(one_side(args.side, args.rss_trials, args.trials)), flush=True)
    elif args.trials:
        trials_record(args.trials)
    else:
        graphs_record(args.rss_trials)


def graphs_record(rss_trials: int) -> None:
    record = new_record("keras_graph_leak", "python benchmarks/keras_graph_leak.py" + (f" --rss-trials {rss_trials}" if rss_trials else ""))
    for side in SIDES:
        record[side] = measure_side(side, "--rss-trials", str(rss_trials))
        for kind, values in record[side]["graphs_alive_after_rounds"].items():
            print(f"{side}: {kind}: graphs left alive after each of 3 rounds: {values}")
        if rss_trials:
            print(f"{side}: EfficientNet-B0 model.fit in one process: RSS {record[side]['efficientnet_b0_fit_rss_mb']} MB, "
                  f"{record[side]['mb_per_fit']:+.0f} MB per fit")  # fmt: skip
    write(record)


def trials_record(trials: int) -> None:
    record = new_record("keras_kernel_rss", f"python benchmarks/keras_graph_leak.py --trials {trials}")
    for side in SIDES:
        rss = measure_side(side, "--trials", str(trials))["efficientnet_b0_trial_rss_mb"]
        record[side] = {"rss_mb": rss, "growth_after_first_percent": 100.0 * (max(rss[1:]) / rss[1] - 1.0)}
        print(f"{side}: RSS after each of {trials} trials: {[round(value) for value in rss]} MB")
    write(record)


if __name__ == "__main__":
    main()
