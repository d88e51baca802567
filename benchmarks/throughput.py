"""Benchmark 5, throughput vs the machine's limit: training images/second of resnet50 and
efficientnet_b0 at 64 px through the suite's own ``backend.fit``, times the model's FLOPs per
training image, as achieved GFLOP/s next to the machine's float32 matrix-multiply GFLOP/s measured
in the same run with the same framework.

- FLOPs per training image: 3x the forward pass's FLOPs counted by torch's ``FlopCounterMode`` on
  the registry's model (convolutions and matrix products; a multiply-add = 2 FLOPs; elementwise
  work not counted, so the achieved figure is a slight underestimate). Keras builds the same layers,
  so its figure uses the same count, taken in a torch subprocess.
- Machine limit: median of ``--repeats`` float32 ``matmul`` of two ``--matmul-size`` squares
  (2 n^3 FLOPs), the best case for the CPU's vector units and the framework's BLAS.
- Training: ``--images`` training images at batch 32, from scratch (weights none: the cost does not
  depend on the values), all layers trained, one ``fit`` of ``--repeats`` + 1 epochs; the first
  (tracing, warm-up) is dropped; the validation pass covers 32 images only so that the figure is
  the training step's.

    python benchmarks/throughput.py --framework torch|keras [--models resnet50 efficientnet_b0]
        [--size 64] [--images 256] [--repeats 3]

The JSON record per model: baseline = machine matmul GFLOP/s, ours = achieved training GFLOP/s,
ratio = the fraction of the machine's limit the training reaches.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_record  # noqa: E402

BATCH = 32
TRAINING_PER_FORWARD = 3.0


def numpy_matmul_gflops(size: int, repeats: int) -> list[float]:
    import numpy as np

    a, b = np.random.rand(size, size).astype(np.float32), np.random.rand(size, size).astype(np.float32)
    a @ b
    return [2 * size**3 / timed(lambda: a @ b) / 1e9 for _ in range(repeats)]


def torch_matmul_gflops(size: int, repeats: int) -> list[float]:
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up: thread pool, BLAS dispatch
    return [2 * size**3 / timed(lambda: torch.mm(a, b)) / 1e9 for _ in range(repeats)]


def keras_matmul_gflops(size: int, repeats: int) -> list[float]:
    import tensorflow as tf

    a, b = tf.random.normal((size, size)), tf.random.normal((size, size))
    tf.matmul(a, b).numpy()
    return [2 * size**3 / timed(lambda: tf.matmul(a, b).numpy()) / 1e9 for _ in range(repeats)]


def training_flops_per_image(model_name: str, size: int) -> dict[str, float]:
    """Forward and forward+backward FLOPs per image, counted by torch's FlopCounterMode on the
    registry's torch model (convolutions and matrix products, a multiply-add = 2 FLOPs; the
    elementwise work is not counted). The Keras models have the same layers (parameter counts agree
    within 1%), so Keras uses this count too, taken in a torch subprocess: TF and torch never share
    a process."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from imagebench.backends.torch_backend import build_model
    from imagebench.core.params import make_params

    model = build_model(make_params(framework="torch", model=model_name, image_size=size, weights="none"), 10)
    pixels, labels = torch.zeros(2, size, size, 3), torch.zeros(2, dtype=torch.long)  # 2: BatchNorm trains on a batch
    model.eval()
    with FlopCounterMode(display=False) as forward, torch.no_grad():
        model(pixels)
    model.train()
    with FlopCounterMode(display=False) as counted:
        F.cross_entropy(model(pixels), labels).backward()
    # Training = 3x forward (backward ~= 2x). The counter's own forward+backward agrees for resnet50
    # (2.97x) but counts depthwise-convolution backward as dense (efficientnet_b0: 40x), so it is
    # kept for reference only.
    per_image = forward.get_total_flops() / 2
    return {"forward": per_image, "training": TRAINING_PER_FORWARD * per_image, "counter_training": counted.get_total_flops() / 2}


def counted_in_torch(model_name: str, size: int) -> dict[str, float]:
    code = (f"import json, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
            f"from throughput import training_flops_per_image as f; print(json.dumps(f({model_name!r}, {size})))")
    output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def training_data(size: int, images: int):
    from imagebench.data.arrays import Split
    from imagebench.data.load import load_trial_data
    from imagebench.core.params import make_params

    data = load_trial_data(make_params(image_size=size, max_per_class=None))
    if images > len(data.train):
        raise SystemExit(f"--images {images} is more than the {len(data.train)} training images of digits")
    train = Split(images=data.train.images[:images], labels=data.train.labels[:images])
    small_val = Split(images=data.val.images[:BATCH], labels=data.val.labels[:BATCH])
    return dataclasses.replace(data, train=train, val=small_val)


def training_rates(framework: str, model_name: str, data, size: int, repeats: int, switches: dict | None = None) -> list[float]:
    """Training images/s of ``repeats`` epochs after a first one (graph tracing, allocator warm-up),
    all in one ``fit`` as a trial trains, read from the epoch times the monitor records."""
    from imagebench.backends import get_backend
    from imagebench.training.monitor import EpochMonitor
    from imagebench.core.params import make_params

    params = make_params(framework=framework, model=model_name, image_size=size, weights="none", freeze_backbone=False,
                         batch_size=BATCH, augment="none", epochs=repeats + 1, early_stopping_patience=0, **(switches or {}))
    backend = get_backend(framework)
    backend.configure(params)
    monitor = EpochMonitor(params)
    backend.fit(backend.build_model(params, data.num_classes), params, data, monitor)
    return [len(data.train) / record.seconds for record in monitor.history[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("keras", "torch"), required=True)
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_b0"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=256, help="training images per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--speed-switches", action="store_true",
                        help="train with mixed_precision, channels_last and compile on (the GPU switches); JSON name gets -switches")
    args = parser.parse_args()
    from imagebench.backends import get_backend

    get_backend(args.framework)  # imported as trials import it (its environment defaults set first)
    torch_side = args.framework == "torch"
    framework_matmul = (torch_matmul_gflops if torch_side else keras_matmul_gflops)(args.matmul_size, args.repeats)
    numpy_matmul = numpy_matmul_gflops(args.matmul_size, args.repeats)
    # the machine's limit: the faster of the framework's and NumPy's BLAS on the same product
    matmul = max(framework_matmul, numpy_matmul, key=statistics.median)
    print(f"float32 matmul {args.matmul_size}^2 GFLOP/s: {args.framework} "
          + ", ".join(f"{value:.1f}" for value in framework_matmul) + "; numpy " + ", ".join(f"{value:.1f}" for value in numpy_matmul))
    count_flops = training_flops_per_image if torch_side else counted_in_torch
    data = training_data(args.size, args.images)
    packages = ["tensorflow-cpu", "tensorflow", "keras"] if args.framework == "keras" else ["torch", "timm"]
    for model_name in args.models:
        started = time.perf_counter()
        switches = dict(mixed_precision=True, channels_last=True, compile=True) if args.speed_switches else {}
        rates = training_rates(args.framework, model_name, data, args.size, args.repeats, switches)
        flops = count_flops(model_name, args.size)
        achieved = [rate * flops["training"] / 1e9 for rate in rates]
        print(f"{model_name}: {flops['forward'] / 1e9:.3f} GFLOP forward, {flops['training'] / 1e9:.3f} GFLOP training per image; "
              "training " + ", ".join(f"{rate:.1f}" for rate in rates) + f" images/s ({time.perf_counter() - started:.0f} s)")
        write_record(
            f"throughput_{args.framework}_{model_name}" + ("-switches" if switches else ""), matmul, achieved, "GFLOP/s", "report the fraction",
            higher_is_better=True, packages=packages,
            notes=f"{model_name} trained from scratch at {args.size} px, batch {BATCH}, {len(data.train)} images per "
                  f"timed epoch; training FLOPs per image = 3 x forward counted by torch FlopCounterMode; "
                  f"baseline = float32 matmul {args.matmul_size}^2, the faster of {args.framework} and numpy; "
                  f"ratio = fraction of the machine's matmul rate reached",
            extra={"images_per_second": rates, "matmul_gflops": {args.framework: framework_matmul, "numpy": numpy_matmul},
                   "forward_gflop_per_image": flops["forward"] / 1e9,
                   "train_gflop_per_image": flops["training"] / 1e9,
                   "counter_forward_backward_gflop_per_image": flops.get("counter_training", float("nan")) / 1e9},
        )


if __name__ == "__main__":
    main()
