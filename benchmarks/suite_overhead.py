"""Benchmark 3, suite overhead: one trial through ``imagebench.run_trial`` in this process (data,
model, fit with per-epoch validation and best weights, test metrics, latency, the whole MLflow
record with figures) vs a minimal hand-written loop training the same model on the same data.

The hand-written loops are what a researcher types in a notebook:
- torch: arrays in memory, shuffle, forward/backward/step per batch, a validation pass per epoch
  keeping the best state_dict, test accuracy from it;
- keras: ``compile`` + ``fit(x, y, validation_data=..., EarlyStopping(restore_best_weights))`` +
  ``evaluate``.
Both build the model from the registry (the same network) and start from decoded digits. The two
sides alternate (hand first in even pairs, ours first in odd ones), after one warm-up each (imports,
graph tracing, MLflow store creation). Besides the medians, the JSON has the median of the pairs'
own differences, which the machine's drift between pairs does not move.

    python benchmarks/suite_overhead.py --framework torch|keras [--model cnn] [--epochs 10]
        [--size 32] [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import scratch_workspace, timed, write_record  # noqa: E402


def trial_params(framework: str, model: str, epochs: int, size: int):
    from imagebench.core.params import make_params

    return make_params(framework=framework, model=model, image_size=size, epochs=epochs, optimizer="adam",
                       learning_rate=1e-3, l2=0.0, batch_size=32, augment="none", early_stopping_patience=0,
                       experiment="bench-suite-overhead")  # fmt: skip


def digits_splits(size: int, seed: int):
    """Decoded digits split 70/15/15, stratified, as a notebook would do it with scikit-learn."""
    from sklearn.model_selection import train_test_split

    from imagebench.data.load import load_digits_images

    images, labels, _names = load_digits_images(size)
    x_train, x_rest, y_train, y_rest = train_test_split(images, labels, test_size=0.3, stratify=labels, random_state=seed)
    x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=seed)
    return (x_train, y_train), (x_val, y_val), (x_test, y_test)


def torch_hand_loop(params) -> float:
    import torch
    import torch.nn.functional as F

    from imagebench.backends.torch_backend import build_model

    torch.manual_seed(params.seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = [
        (torch.as_tensor(x), torch.as_tensor(y)) for x, y in digits_splits(params.image_size, params.seed)
    ]
    model = build_model(params, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.learning_rate)

    def accuracy(x, y) -> float:
        model.eval()
        with torch.no_grad():
            return float((torch.cat([model(x[i : i + 256]) for i in range(0, len(x), 256)]).argmax(1) == y).float().mean())

    best, best_state = -1.0, None
    for _epoch in range(params.epochs):
        model.train()
        for batch in torch.randperm(len(x_train)).split(params.batch_size):
            loss = F.cross_entropy(model(x_train[batch]), y_train[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        val = accuracy(x_val, y_val)
        if val > best:
            best, best_state = val, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    return accuracy(x_test, y_test)


def keras_hand_loop(params) -> float:
    import keras

    from imagebench.backends.keras_backend import build_model

    keras.utils.set_random_seed(params.seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = digits_splits(params.image_size, params.seed)
    model = build_model(params, 10)
    model.compile(keras.optimizers.Adam(params.learning_rate), "sparse_categorical_crossentropy", metrics=["accuracy"])
    stop = keras.callbacks.EarlyStopping("val_accuracy", patience=params.epochs, restore_best_weights=True)
    model.fit(x_train.astype(np.float32), y_train, batch_size=params.batch_size, epochs=params.epochs,
              validation_data=(x_val.astype(np.float32), y_val), callbacks=[stop], verbose=0)  # fmt: skip
    return float(model.evaluate(x_test.astype(np.float32), y_test, verbose=0)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", choices=("keras", "torch"), required=True)
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagebench-bench-") as temp:
        scratch_workspace(Path(temp))
        from imagebench.trial import run_trial

        params = trial_params(args.framework, args.model, args.epochs, args.size)
        hand_loop = torch_hand_loop if args.framework == "torch" else keras_hand_loop
        baseline, ours, accuracies = [], [], {"hand": [], "imagebench": []}
        sides = {"hand": lambda: accuracies["hand"].append(hand_loop(params)),
                 "imagebench": lambda: accuracies["imagebench"].append(run_trial(params, verbose=False).metrics["test/accuracy"])}
        for attempt in range(args.repeats + 1):
            # hand, ours | ours, hand | ...: the machine's speed drifts over seconds, and a side that
            # always ran second would carry the drift of every pair (this order cancels a steady one)
            order = ["hand", "imagebench"] if attempt % 2 == 0 else ["imagebench", "hand"]
            seconds = {side: timed(sides[side]) for side in order}
            print(f"run {attempt}{' (warm-up)' if not attempt else ''}: hand loop {seconds['hand']:.2f} s, "
                  f"imagebench {seconds['imagebench']:.2f} s")
            if attempt:
                baseline.append(seconds["hand"])
                ours.append(seconds["imagebench"])
    packages = ["tensorflow-cpu", "tensorflow", "keras", "mlflow"] if args.framework == "keras" else ["torch", "timm", "mlflow"]
    record = write_record(
        f"suite_overhead_{args.framework}", baseline, ours, "seconds", "<= 5% slower (ratio >= 0.952)",
        higher_is_better=False, packages=packages,
        notes=f"{args.model}, {args.size} px, {args.epochs} epochs, adam 1e-3, batch 32, digits; test accuracy hand "
              f"{np.mean(accuracies['hand'][1:]):.3f} vs imagebench {np.mean(accuracies['imagebench'][1:]):.3f}",
        extra={"overhead_percent": 100.0 * (np.median(ours) / np.median(baseline) - 1.0),
               "pairwise_median_overhead_percent": 100.0 * float(np.median(np.array(ours) / np.array(baseline) - 1.0))},
    )
    print(f"imagebench is {record['overhead_percent']:+.1f}% vs the hand-written loop "
          f"(median of the pairs: {record['pairwise_median_overhead_percent']:+.1f}%)")


if __name__ == "__main__":
    main()
