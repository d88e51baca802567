"""Training and inference for the PyTorch backend: optimisers, augmentation warp, fit, predict."""

from __future__ import annotations

import contextlib
import copy
import time
import warnings
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imagebench.training import augment
from imagebench.backends.torch_models import backbone_model, l2_penalty, regularized_weights
from imagebench.data.arrays import Split, TrialData, batch_slices
from imagebench.training.evaluation import loss_and_accuracy
from imagebench.training.monitor import EpochMonitor, EpochRecord, epoch_rng
from imagebench.core.params import TrialParams


def device_for() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(params: TrialParams, model: nn.Module) -> torch.optim.Optimizer:
    """Keras' defaults in torch terms (frozen parameters are left out)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    lr = params.learning_rate
    if params.optimizer == "rmsprop":
        # Keras RMSprop(rho=0.9, epsilon=1e-7). Keras adds eps inside the sqrt, torch outside;
        # only matters while the squared-gradient average is below ~1e-7.
        return torch.optim.RMSprop(trainable, lr=lr, alpha=0.9, eps=1e-7)
    if params.optimizer == "adam":
        # Keras Adam(epsilon=1e-7): same betas (0.9, 0.999); torch's default eps is 1e-8.
        return torch.optim.Adam(trainable, lr=lr, eps=1e-7)
    if params.optimizer == "adamw":
        # Keras AdamW decays decoupled (w -= lr * wd * w) on every variable, like torch's AdamW.
        return torch.optim.AdamW(trainable, lr=lr, weight_decay=params.weight_decay, eps=1e-7)
    # Keras SGD(momentum=m): same update as torch's for a constant learning rate.
    return torch.optim.SGD(trainable, lr=lr, momentum=params.momentum)


def warp(images: torch.Tensor, theta: torch.Tensor, brightness: torch.Tensor) -> torch.Tensor:
    """Apply augment's output->input affine ``theta`` to NHWC float pixels, then brightness.

    Border padding repeats edge pixels (Keras' fill_mode='nearest' look); the result stays in
    0..255 because the model's own preprocessing runs afterwards.
    """
    n, height, width, _ = images.shape
    nchw = images.permute(0, 3, 1, 2)
    grid = F.affine_grid(theta, [n, 3, height, width], align_corners=False)
    warped = F.grid_sample(nchw, grid, mode="bilinear", padding_mode="border", align_corners=False)
    warped = warped * brightness.view(n, 1, 1, 1)
    return warped.clamp(0.0, 255.0).permute(0, 2, 3, 1)


def augment_batch(images: torch.Tensor, spec: augment.AugmentSpec, rng: np.random.Generator) -> torch.Tensor:
    theta, brightness = augment.sample(len(images), spec, rng)
    device = images.device
    return warp(images, torch.from_numpy(theta).to(device), torch.from_numpy(brightness).to(device))



def _outputs(module: nn.Module, images: np.ndarray, batch_size: int, transform=lambda out: out) -> list[np.ndarray]:
    """``transform(module(batch))`` batch by batch in inference mode, as float32 NumPy chunks."""
    module.eval()
    device = next(module.parameters()).device
    chunks = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.array(images[start : start + batch_size])).to(device)  # a copy: caches are read-only
            chunks.append(transform(module(batch).float()).cpu().numpy())
    return chunks


def predict_proba(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    chunks = _outputs(model, images, batch_size, lambda logits: torch.softmax(logits, dim=1))
    return np.concatenate(chunks) if chunks else np.zeros((0, model.classifier.out_features), np.float32)


def pooled_features(model: nn.Module, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """The frozen backbone's pooled features of uint8 pixels (N, H, W, 3), as float32 (N, D)."""
    return np.concatenate(_outputs(backbone_model(model), images, batch_size)).astype(np.float32)


class TrainStep:
    """The GPU switches of ``params`` applied to one training step (all off by default).

    - ``mixed_precision``: autocast to float16 on CUDA (with a GradScaler against underflow) or
      bfloat16 on a CPU; weights, optimizer state and the evaluation stay float32.
    - ``channels_last``: NHWC memory format for the convolutions (tensor cores prefer it).
    - ``compile``: ``torch.compile`` of the model for the step; the eager module shares its
      parameters, so evaluation, checkpoints and the feature cache see the same weights.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, params: TrialParams, device: torch.device):
        if params.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model, self.optimizer, self.l2 = model, optimizer, params.l2
        self.regularized = regularized_weights(model) if params.l2 else []  # found once, not every step
        self.forward = torch.compile(model) if params.compile else model
        self.autocast_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if params.mixed_precision else None
        self.device_type = device.type
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.autocast_dtype == torch.float16)

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on (x, y); returns the detached loss and logits."""
        with self._autocast():
            logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y)
            if self.regularized:  # Keras reports the loss with the regulariser in it; so do we
                loss = loss + l2_penalty(self.model, self.l2, self.regularized)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach()


def _train_epoch(step: TrainStep, params, images, labels, order, spec, rng) -> tuple[float, float]:
    """One pass over the shuffled train set; returns sample-weighted mean loss and accuracy."""
    step.model.train()  # predict_proba left it in eval mode; frozen BN stays eval (ImageClassifier.train)
    device = next(step.model.parameters()).device
    # Sums stay on the device: reading them back once per epoch, not per batch, keeps a GPU busy.
    total_loss, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long), 0
    for index in batch_slices(order, params.batch_size):
        key = torch.as_tensor(index)
        x = images[key].to(device, non_blocking=True).float()
        y = labels[key].to(device, non_blocking=True)
        if not spec.is_identity:
            x = augment_batch(x, spec, rng)
        loss, logits = step(x, y)
        total_loss += loss * len(index)
        correct += (logits.argmax(dim=1) == y).sum()
        seen += len(index)
    return total_loss.item() / seen, correct.item() / seen


def fit(
    model: nn.Module, params: TrialParams, data: TrialData, monitor: EpochMonitor,
    epoch_budget: Optional[int] = None, resume: Optional[dict[str, Any]] = None,
) -> dict[str, Any]:
    """Train on data.train (augmented per preset), validate each epoch, end holding the best epoch's weights.

    ``resume`` is the state an earlier call returned (halving: continue, do not restart); training
    stops after ``epoch_budget`` epochs in total. Returns the state to continue from later.
    """
    device = device_for()
    model.to(device)
    optimizer = make_optimizer(params, model)
    best_state = copy.deepcopy(model.state_dict())
    if resume is not None:
        model.load_state_dict(resume["weights"])
        optimizer.load_state_dict(resume["optimizer"])
        best_state = resume["best_weights"]
        torch.set_rng_state(resume["torch_rng"])  # dropout continues its stream
    step = TrainStep(model, optimizer, params, device)
    if resume is not None and resume.get("scaler"):
        step.scaler.load_state_dict(resume["scaler"])
    spec = augment.preset(params.augment)
    # The train set stays a uint8 CPU tensor (no copy of the array, no GPU memory for big sets);
    # each batch is indexed (a copy: data.train is never modified), moved, then made float.
    with warnings.catch_warnings():  # a read-only memory map from the decode cache; batches are copies
        warnings.filterwarnings("ignore", message=".*not writable.*")
        images = torch.as_tensor(data.train.images)
    labels = torch.as_tensor(data.train.labels, dtype=torch.long)
    while monitor.has_epochs_left(epoch_budget):
        epoch, started = monitor.next_epoch, time.perf_counter()
        lr = monitor.lr_for_epoch(epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        rng = epoch_rng(params.seed, epoch)
        order = rng.permutation(len(data.train))
        train_loss, train_accuracy = _train_epoch(step, params, images, labels, order, spec, rng)
        val_loss, val_accuracy = _validate(model, data.val)
        record = EpochRecord(epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr, time.perf_counter() - started)
        if monitor.end_epoch(record):
            best_state = copy.deepcopy(model.state_dict())
    state = {
        "weights": copy.deepcopy(model.state_dict()),
        "best_weights": best_state,
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "torch_rng": torch.get_rng_state(),
        "scaler": step.scaler.state_dict(),
    }
    model.load_state_dict(best_state)  # test numbers come from the val-best weights
    return state


def _validate(model: nn.Module, split: Split) -> tuple[float, float]:
    # Validation images go in as they are: never augmented (docs/lessons.md, failure 4).
    return loss_and_accuracy(predict_proba(model, split.images), split.labels)
