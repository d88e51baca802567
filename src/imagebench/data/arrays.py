"""The in-memory shape every backend trains from: uint8 pixel arrays per split plus the class map."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    images: np.ndarray  # (N, H, W, 3) uint8 RGB, already resized to image_size
    labels: np.ndarray  # (N,) int64 indices into class_names

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class TrialData:
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    fingerprint: str  # identifies the dataset content (built-in version or files, sizes, mtimes)
    source: str  # what the user asked for: built-in name or absolute folder path
    skipped_files: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_map(self) -> dict[str, str]:
        return {str(index): name for index, name in enumerate(self.class_names)}

    def split_sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def class_counts(self):
        """DataFrame: one row per class, one column per split (explore notebook, check-data)."""
        import pandas as pd

        splits = {"train": self.train, "val": self.val, "test": self.test}
        counts = {name: np.bincount(split.labels, minlength=self.num_classes) for name, split in splits.items()}
        return pd.DataFrame(counts, index=pd.Index(self.class_names, name="class"))


def batch_slices(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Training index batches, shared by both backends so they cut the same batches (and so draw
    the same augmentation stream from one seed). A trailing single image joins the previous batch:
    BatchNorm cannot train on one value per channel (a 1x1 feature map at small image sizes)."""
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        last = batches.pop()  # popped first: `b[-2] = f(b.pop())` would index the shortened list
        batches[-1] = np.concatenate([batches[-1], last])
    return batches
