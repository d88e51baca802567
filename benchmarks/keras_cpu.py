"""Keras on this CPU: how much of its training speed is TensorFlow and how much is our loop.

Training images/s of resnet50 and efficientnet_b0 (64 px, from scratch, batch 32, 256 images per
timed epoch, the first epoch dropped: tracing) in one run, each variant in a fresh process (thread
and oneDNN settings are read when TensorFlow starts):

- ``ours``: the suite's ``backend.fit`` (what a trial runs; as benchmark 5);
- ``ours_xla``: the same with the trial parameter ``compile: true`` (``jit_compile`` in Keras);
- ``plain_fit``: plain ``model.compile`` + ``model.fit`` on the same NumPy arrays, the same model
  from the registry, the same optimizer: the baseline of this record;
- ``plain_fit_xla``: plain ``fit`` with ``jit_compile=True``;
- ``plain_fit_1_thread``: plain ``fit`` with TensorFlow limited to one intra-op and one inter-op thread;
- ``plain_fit_onednn_off``: plain ``fit`` with ``TF_ENABLE_ONEDNN_OPTS=0``;
- ``torch_ours``: torch's ``backend.fit`` on the same data, for reference.

    python benchmarks/keras_cpu.py [--models resnet50 efficientnet_b0] [--variants ...] [--repeats 3] [--rounds 1]

One JSON record per model, ``results/benchmarks/keras_cpu_<model>.json``: baseline = plain ``fit``,
ours = ``backend.fit`` (images/s, higher is better); every variant's rates under ``variants``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_record  # noqa: E402
from throughput import BATCH, training_data, training_rates  # noqa: E402

SIZE = 64
# variant -> how it trains and the environment TensorFlow starts with
VARIANTS: dict[str, dict] = {
    "ours": {"runner": "ours", "framework": "keras"},
    "ours_xla": {"runner": "ours", "framework": "keras", "switches": {"compile": True}},
    "plain_fit": {"runner": "plain"},
    "plain_fit_xla": {"runner": "plain", "jit_compile": True},
    "plain_fit_1_thread": {"runner": "plain", "env": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}},
    "plain_fit_onednn_off": {"runner": "plain", "env": {"TF_ENABLE_ONEDNN_OPTS": "0"}},
    "torch_ours": {"runner": "ours", "framework": "torch"},
}


def plain_fit_rates(model_name: str, images: int, repeats: int, jit_compile: bool) -> list[float]:
    """What a notebook types: the registry's Keras model, ``compile``, ``fit`` on arrays."""
    import keras
    import numpy as np

    from imagebench.backends.keras_backend import build_model, make_optimizer
    from imagebench.core.params import make_params

    params = make_params(framework="keras", model=model_name, image_size=SIZE, weights="none", freeze_backbone=False,
                         batch_size=BATCH, augment="none")  # fmt: skip
    data = training_data(SIZE, images)
    keras.utils.set_random_seed(params.seed)
    model = build_model(params, data.num_classes)
    model.compile(make_optimizer(params), "sparse_categorical_crossentropy", metrics=["accuracy"], jit_compile=jit_compile)

    class EpochTimes(keras.callbacks.Callback):
        seconds: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            EpochTimes.seconds.append(time.perf_counter() - self.started)

    x, y = data.train.images.astype(np.float32), data.train.labels
    model.fit(x, y, batch_size=BATCH, epochs=repeats + 1, verbose=0, callbacks=[EpochTimes()])
    return [len(x) / seconds for seconds in EpochTimes.seconds[1:]]


def run_variant(name: str, model_name: str, images: int, repeats: int) -> list[float]:
    """In this process (the child): the variant's training images/s."""
    variant = VARIANTS[name]
    if variant["runner"] == "plain":
        from imagebench.backends import load_tensorflow

        load_tensorflow()
        return plain_fit_rates(model_name, images, repeats, variant.get("jit_compile", False))
    from imagebench.backends import get_backend

    get_backend(variant["framework"])
    return training_rates(variant["framework"], model_name, training_data(SIZE, images), SIZE, repeats, variant.get("switches"))


def in_fresh_process(name: str, model_name: str, images: int, repeats: int) -> dict:
    env = {**os.environ, **VARIANTS[name].get("env", {})}
    command = [sys.executable, __file__, "--child", name, "--models", model_name, "--images", str(images), "--repeats", str(repeats)]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        error = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": error}
    return {"images_per_second": json.loads(lines[-1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_b0"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the variants this many times")
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.models[0], args.images, args.repeats)))
        return
    for model_name in args.models:
        results: dict[str, dict] = {}
        # variants alternate round by round: this machine's speed drifts by tens of percent over minutes
        for _round in range(args.rounds):
            for name in args.variants:
                started = time.perf_counter()
                found = in_fresh_process(name, model_name, args.images, args.repeats)
                kept = results.setdefault(name, {"images_per_second": []})
                kept["images_per_second"] += found.get("images_per_second", [])
                if "error" in found:
                    kept["error"] = found["error"]
                rates = found.get("images_per_second")
                shown = f"{statistics.median(rates):.1f} images/s" if rates else found["error"]
                print(f"{model_name} {name}: {shown} ({time.perf_counter() - started:.0f} s)", flush=True)
        baseline = results.get("plain_fit", {}).get("images_per_second")
        ours = results.get("ours", {}).get("images_per_second")
        if baseline and ours:
            write_record(
                f"keras_cpu_{model_name}", baseline, ours, "images/s", "report: where Keras' CPU time goes", higher_is_better=True,
                packages=["tensorflow-cpu", "tensorflow", "keras", "torch", "timm"],
                notes=f"{model_name} from scratch at {SIZE} px, batch {BATCH}, {args.images} images per timed epoch, "
                      f"{args.repeats} timed epochs after one dropped, {args.rounds} round(s) of the variants in turn; "
                      "each variant in a fresh process; baseline = plain model.fit on NumPy arrays, ours = backend.fit; "
                      "variants: see benchmarks/keras_cpu.py",
                extra={"variants": results},
            )  # fmt: skip


if __name__ == "__main__":
    main()
