"""Benchmark 5, throughput vs the machine's limit: training images/second of resnet50 and
efficientnet_b0 at 64 px through the suite's own ``backend.fit``, times the model's FLOPs per
training image, as achieved GFLOP/s next to the machine's float32 matrix-multiply GFLOP/s measured
in the same run with the same framework.

- FLOPs per image: the framework's own counter on one forward pass (torch ``FlopCounterMode``;
  TensorFlow's graph profiler on the traced forward), a multiply-add counted as 2 FLOPs. A
  training image costs forward + backward ~= 3x the forward (the usual convention, stated here
  rather than measured per op).
- Machine limit: median of ``--repeats`` float32 ``matmul`` of two ``--matmul-size`` squares
  (2 n^3 FLOPs), the best case for the CPU's vector units and the framework's BLAS.
- Training: ``--images`` training images at batch 32, from scratch (weights none: the cost does not
  depend on the values), all layers trained, validation pass on 32 images only so that the figure
  is the training step's.

    python benchmarks/throughput.py --framework torch|keras [--models resnet50 efficientnet_b0]
        [--size 64] [--images 256] [--repeats 3]

The JSON record per model: baseline = machine matmul GFLOP/s, ours = achieved training GFLOP/s,
ratio = the fraction of the machine's limit the training reaches.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_record  # noqa: E402

BATCH = 32
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward (gradients w.r.t. activations and weights)


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


def torch_forward_flops(model, size: int) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, size, size, 3))
    return float(counter.get_total_flops())


def keras_forward_flops(model, size: int) -> float:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    forward = tf.function(lambda pixels: model(pixels, training=False))
    graph = convert_variables_to_constants_v2(forward.get_concrete_function(tf.TensorSpec((1, size, size, 3), tf.float32))).graph
    options = tf.compat.v1.profiler.ProfileOptionBuilder(tf.compat.v1.profiler.ProfileOptionBuilder.float_operation())
    options = options.with_empty_output().build()
    profile = tf.compat.v1.profiler.profile(graph=graph, run_meta=tf.compat.v1.RunMetadata(), cmd="op", options=options)
    return float(profile.total_float_ops)


def training_data(size: int, images: int):
    from imagebench.data.arrays import Split
    from imagebench.data.load import load_trial_data
    from imagebench.params import make_params

    data = load_trial_data(make_params(image_size=size, max_per_class=None))
    if images > len(data.train):
        raise SystemExit(f"--images {images} is more than the {len(data.train)} training images of digits")
    train = Split(images=data.train.images[:images], labels=data.train.labels[:images])
    small_val = Split(images=data.val.images[:BATCH], labels=data.val.labels[:BATCH])
    return dataclasses.replace(data, train=train, val=small_val)


def training_rates(framework: str, model_name: str, data, size: int, repeats: int) -> tuple[list[float], object]:
    from imagebench.backends import get_backend
    from imagebench.monitor import EpochMonitor
    from imagebench.params import make_params

    params = make_params(framework=framework, model=model_name, image_size=size, weights="none", freeze_backbone=False,
                         batch_size=BATCH, augment="none", epochs=1, early_stopping_patience=0)
    backend = get_backend(framework)
    backend.configure(params)
    model = backend.build_model(params, data.num_classes)
    rates = []
    for attempt in range(repeats + 1):
        seconds = timed(lambda: backend.fit(model, params, data, EpochMonitor(params)))
        if attempt:  # the first traces graphs and warms allocators
            rates.append(len(data.train) / seconds)
    return rates, model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("keras", "torch"), required=True)
    parser.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_b0"])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--images", type=int, default=256, help="training images per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--matmul-size", type=int, default=2048)
    args = parser.parse_args()
    from imagebench.backends import get_backend

    get_backend(args.framework)  # imported as trials import it (its environment defaults set first)
    if args.framework == "torch":
        matmul, count_flops = torch_matmul_gflops(args.matmul_size, args.repeats), torch_forward_flops
    else:
        matmul, count_flops = keras_matmul_gflops(args.matmul_size, args.repeats), keras_forward_flops
    print(f"{args.framework} float32 matmul {args.matmul_size}^2: " + ", ".join(f"{value:.1f}" for value in matmul) + " GFLOP/s")
    data = training_data(args.size, args.images)
    packages = ["tensorflow-cpu", "tensorflow", "keras"] if args.framework == "keras" else ["torch", "timm"]
    for model_name in args.models:
        started = time.perf_counter()
        rates, model = training_rates(args.framework, model_name, data, args.size, args.repeats)
        forward = count_flops(model, args.size)
        per_image = forward * TRAIN_FLOPS_PER_FORWARD
        achieved = [rate * per_image / 1e9 for rate in rates]
        print(f"{model_name}: {forward / 1e9:.3f} GFLOP forward per image, training "
              + ", ".join(f"{rate:.1f}" for rate in rates) + f" images/s ({time.perf_counter() - started:.0f} s)")
        write_record(
            f"throughput_{args.framework}_{model_name}", matmul, achieved, "GFLOP/s", "report the fraction",
            higher_is_better=True, packages=packages,
            notes=f"{model_name} trained from scratch at {args.size} px, batch {BATCH}, {len(data.train)} images per "
                  f"timed epoch; {forward / 1e9:.4f} GFLOP forward per image (x{TRAIN_FLOPS_PER_FORWARD:g} for training); "
                  f"baseline = float32 matmul {args.matmul_size}^2; ratio = fraction of the machine's matmul rate reached",
            extra={"images_per_second": rates, "forward_gflop_per_image": forward / 1e9,
                   "train_gflop_per_image": per_image / 1e9},
        )


if __name__ == "__main__":
    main()
