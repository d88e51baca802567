"""Keras training loop pieces: optimizer, augmented training batches, the per-epoch monitor callback."""

from __future__ import annotations

from imagebench.backends import load_tensorflow  # noqa: E402

load_tensorflow()  # before keras: its environment, and TensorFlow's start-up chatter kept out of outputs

import json  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from typing import Any, Optional  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from imagebench.training import augment  # noqa: E402
from imagebench.backends.keras_models import backbone_model, new_head  # noqa: E402
from imagebench.data.arrays import Split, TrialData, batch_slices  # noqa: E402
from imagebench.training.evaluation import loss_and_accuracy  # noqa: E402
from imagebench.training.monitor import EpochMonitor, EpochRecord, epoch_rng  # noqa: E402
from imagebench.core.params import TrialParams  # noqa: E402


def make_optimizer(params: TrialParams) -> keras.optimizers.Optimizer:
    # Keras' epsilon defaults are kept on purpose: the torch backend sets its epsilons to match.
    lr = params.learning_rate
    if params.optimizer == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate=lr, rho=0.9)
    if params.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=lr, weight_decay=params.weight_decay)
    if params.optimizer == "sgd":
        return keras.optimizers.SGD(learning_rate=lr, momentum=params.momentum)
    return keras.optimizers.Adam(learning_rate=lr)


# Heads trained on cached features, kept compiled in the kernel with their traced training step.
# Keras traces a new training graph for every compiled model (~0.6-1 s for a 5-layer head here, a
# fifth of a cached trial); the 52 head trials of a grid share a handful of graphs (same layers, L2,
# dropout and optimizer settings; learning rates differ only in a variable). A trial whose head has
# the graph of a kept one trains the kept model, reset to exactly the state a new head and a new
# optimizer would start from (``build_head``, ``compile_model``), so its numbers are unchanged.
_KEPT_HEADS: OrderedDict[tuple, keras.Model] = OrderedDict()
KEPT_HEADS = 8  # a grid's order cycles through L2 x batch x optimizer settings within a few trials


def _training_graph_key(head: keras.Model, params: TrialParams) -> Optional[tuple]:
    """Everything the traced training step depends on; None where keeping is not worth the risk
    (mixed precision wraps the optimizer, XLA compiles per model)."""
    if params.mixed_precision or params.compile:
        return None
    optimizer = {key: value for key, value in make_optimizer(params).get_config().items() if key not in ("learning_rate", "name")}
    return head.to_json(), json.dumps(optimizer, sort_keys=True, default=str)


def build_head(params: TrialParams, num_classes: int, feature_dim: int) -> keras.Model:
    """``new_head``'s model, or a kept compiled head with the same training graph given its initial
    weights (and dropout seed states), so the trial retraces nothing."""
    fresh = new_head(params, num_classes, feature_dim)
    key = _training_graph_key(fresh, params)
    kept = _KEPT_HEADS.get(key) if key is not None else None
    if kept is None:
        if key is not None:
            fresh._imagebench_graph_key = key
            _KEPT_HEADS[key] = fresh
            while len(_KEPT_HEADS) > KEPT_HEADS:
                _KEPT_HEADS.popitem(last=False)
        return fresh
    _assign(kept.variables, _values(fresh.variables))  # every weight and the dropout layers' seed states
    _KEPT_HEADS.move_to_end(key)
    return kept


def _reset_optimizer(model: keras.Model, params: TrialParams) -> None:
    """The kept optimizer's slots, step count and learning rate as a new one's would start."""
    fresh = make_optimizer(params)
    fresh.build(model.trainable_variables)
    _assign(model.optimizer.variables, _values(fresh.variables))


def compile_model(model: keras.Model, params: TrialParams) -> None:
    if getattr(model, "_imagebench_graph_key", None) is not None and getattr(model, "compiled", False):
        _reset_optimizer(model, params)  # a kept head (build_head): its traced step stays valid
        return
    # from_logits=False: the classifier already ends in softmax.
    model.compile(
        optimizer=make_optimizer(params),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=False),
        metrics=["accuracy"],
        jit_compile=params.compile,  # XLA; under mixed precision Keras scales the loss itself
    )


def inference_fn(model: keras.Model):
    """The model's inference forward as one traced graph, built once per model.

    Eager calls dispatch every op from Python: ~10x slower for ResNet50 on one image (99 ms vs
    9 ms measured here), which would make Keras latencies and per-epoch validation look far worse
    than the network is. model.predict adds per-call setup that hurts small data.
    """
    forward = getattr(model, "_imagebench_forward", None)
    if forward is None:

        def call(pixels):
            return model(pixels, training=False)

        # autograph off: a plain call needs no Python-to-graph control-flow conversion
        forward = tf.function(call, reduce_retracing=True, autograph=False)
        model._imagebench_forward = forward
    return forward


def _outputs(model: keras.Model, images: np.ndarray, batch_size: int) -> np.ndarray:
    """The model's inference outputs, computed batch by batch through the traced forward."""
    forward = inference_fn(model)
    chunks = [
        forward(tf.convert_to_tensor(images[start : start + batch_size], tf.float32)).numpy()
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(chunks, axis=0)


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, K): the classifier ends in softmax."""
    return _outputs(model, images, batch_size)


def pooled_features(model: keras.Model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The frozen backbone's pooled features of uint8 pixels (N, H, W, 3), as float32 (N, D)."""
    return _outputs(backbone_model(model), images, batch_size).astype(np.float32)


def _warp(images: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """Warp float images (N, H, W, C) by normalised output->input ``theta`` (N, 2, 3), bilinear, edge fill."""
    height, width = images.shape[1:3]
    warped = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.convert_to_tensor(images, tf.float32),
        transforms=tf.convert_to_tensor(augment.theta_to_pixel_projective(theta, height, width)),
        output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(0.0, tf.float32),
        interpolation="BILINEAR",
        fill_mode="NEAREST",
    )
    return warped.numpy()


def _augment_batch(images: np.ndarray, theta: np.ndarray, brightness: np.ndarray) -> np.ndarray:
    warped = _warp(images, theta) * brightness[:, None, None, None]
    return np.clip(warped, 0.0, 255.0).astype(np.float32)



class TrainBatches(keras.utils.PyDataset):
    """Shuffled, optionally augmented float32 training batches.

    Keras calls ``__getitem__`` in its own order (twice for index 0 and 1 while inferring the
    tensor spec), so each epoch's order and augmentation draws are made up front in ``_new_epoch``
    and ``__getitem__`` only looks them up: the result depends on the seed and the epoch alone.
    """

    def __init__(self, split: Split, batch_size: int, spec: augment.AugmentSpec, seed: int, first_epoch: int):
        super().__init__(workers=1, use_multiprocessing=False)
        self.split, self.batch_size, self.spec, self.seed = split, batch_size, spec, seed
        self.epoch = first_epoch
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.rng = epoch_rng(self.seed, self.epoch)
        self.order = self.rng.permutation(len(self.split))
        self.batches = batch_slices(self.order, self.batch_size)
        self.draws: list[Optional[tuple[np.ndarray, np.ndarray]]] = [None] * len(self.batches)
        if not self.spec.is_identity:
            # Drawn batch by batch, in order: the same stream as a per-batch sampling loop.
            self.draws = [augment.sample(len(batch), self.spec, self.rng) for batch in self.batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        indices = self.batches[index]
        images = self.split.images[indices].astype(np.float32)  # fancy indexing copies: data untouched
        if self.draws[index] is not None:
            images = _augment_batch(images, *self.draws[index])
        return images, self.split.labels[indices].astype(np.int64)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        self._new_epoch()


class MonitorCallback(keras.callbacks.Callback):
    """Bridges Keras' epoch loop to EpochMonitor: lr per epoch, unaugmented val, best weights, stop."""

    def __init__(self, val: Split, monitor: EpochMonitor):
        super().__init__()
        self.val, self.monitor = val, monitor
        self.best_weights: Optional[list[np.ndarray]] = None
        self._lr = 0.0
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()
        self._lr = float(self.monitor.lr_for_epoch(epoch + 1))
        self.model.optimizer.learning_rate = self._lr

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        val_loss, val_accuracy = loss_and_accuracy(predict_proba(self.model, self.val.images), self.val.labels)
        record = EpochRecord(
            epoch=epoch + 1,
            train_loss=float(logs["loss"]),  # Keras' loss includes the l2 penalty
            train_accuracy=float(logs["accuracy"]),
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=self._lr,
            seconds=time.perf_counter() - self._started,
        )
        if self.monitor.end_epoch(record):
            self.best_weights = self.model.get_weights()
        if self.monitor.should_stop:
            self.model.stop_training = True


def _values(variables) -> list[np.ndarray]:
    return [variable.numpy() for variable in variables]


def _assign(variables, values: list[np.ndarray]) -> None:
    for variable, value in zip(variables, values, strict=True):
        variable.assign(value)


def _restore(model: keras.Model, callback: MonitorCallback, resume: dict[str, Any]) -> None:
    # model.variables, not get_weights(): it includes the dropout layers' seed-generator state
    _assign(model.variables, resume["variables"])
    model.optimizer.build(model.trainable_variables)  # its slots exist only once built
    _assign(model.optimizer.variables, resume["optimizer"])
    callback.best_weights = resume["best_weights"]


def fit(
    model: keras.Model, params: TrialParams, data: TrialData, monitor: EpochMonitor,
    epoch_budget: Optional[int] = None, resume: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Train on data.train, validate on raw data.val each epoch, end holding the best epoch's weights.

    ``resume``/``epoch_budget``/return value: as in the torch backend (halving continues a trial).
    """
    compile_model(model, params)
    callback = MonitorCallback(data.val, monitor)
    if resume is not None:
        _restore(model, callback, resume)
    if monitor.has_epochs_left(epoch_budget):
        first = monitor.next_epoch
        batches = TrainBatches(data.train, params.batch_size, augment.preset(params.augment), params.seed, first)
        model.fit(batches, initial_epoch=first - 1, epochs=monitor.last_epoch(epoch_budget), verbose=0, callbacks=[callback])
    state = {"variables": _values(model.variables), "best_weights": callback.best_weights, "optimizer": _values(model.optimizer.variables)}
    if callback.best_weights is not None:
        model.set_weights(callback.best_weights)
    return state
