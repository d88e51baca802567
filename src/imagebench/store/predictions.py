"""A trial's per-image test predictions, written by the trial and read back from MLflow, so that
every comparison between trials (ties, parity, sweep against sweep) needs the record alone, also
for trials whose weights were pruned and for sweeps recorded on a shared server.

One artifact per run, ``test_predictions.npz``: the true and the predicted class of each test image
in the test split's order, the class probabilities (float16: enough to rank, a quarter of the
bytes), the class names, and a digest of the test images and labels. Two runs are compared image
by image only when their digests are equal (same images, same order).
"""

from __future__ import annotations

import hashlib
import io
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from imagebench.store.client import client
from imagebench.store.keys import ARTIFACT_PREDICTIONS


@dataclass(frozen=True)
class TestPredictions:
    labels: np.ndarray  # (N,) true class indices, in the test split's order
    predicted: np.ndarray  # (N,) the argmax of the float32 probabilities: the logged test accuracy's
    probabilities: np.ndarray  # (N, C) float16
    class_names: list[str]
    test_set: str  # digest of the test images and labels

    __test__ = False  # not a pytest test class, whatever its name

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.labels) else float("nan")


def test_set_digest(images: np.ndarray, labels: np.ndarray) -> str:
    """Same digest = the same test images with the same labels in the same order."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


test_set_digest.__test__ = False  # a pytest collection guard: the name starts with "test"


def from_trial(images: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> TestPredictions:
    return TestPredictions(np.asarray(labels, dtype=np.int32), probabilities.argmax(axis=1).astype(np.int32),
                           probabilities.astype(np.float16), list(class_names), test_set_digest(images, labels))


def to_bytes(predictions: TestPredictions) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=predictions.labels, predicted=predictions.predicted,
                        probabilities=predictions.probabilities, class_names=np.array(predictions.class_names, dtype=str),
                        test_set=np.array(predictions.test_set))  # fmt: skip
    return buffer.getvalue()


def from_bytes(data: bytes) -> TestPredictions:
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        return TestPredictions(arrays["labels"], arrays["predicted"], arrays["probabilities"],
                               [str(name) for name in arrays["class_names"]], str(arrays["test_set"]))  # fmt: skip


def load(run_id: str) -> Optional[TestPredictions]:
    """The run's test predictions; None for a run recorded before they were (or without a test set)."""
    names = {item.path for item in client().list_artifacts(run_id)}
    if ARTIFACT_PREDICTIONS not in names:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = client().download_artifacts(run_id, ARTIFACT_PREDICTIONS, folder)
        return from_bytes(Path(path).read_bytes())
