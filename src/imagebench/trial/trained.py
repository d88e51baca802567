"""A trial's trained model kept on disk until the sweep knows whether it is a leader.

Every finished trial writes, in its record folder (``results/<experiment>/runs/<run name>.record/
model/``, which travels back from a Ray node like the rest of the record):

- the validation-best weights that produced its test numbers (the backend's own file format; a
  head trained on cached features keeps the head's and the shared backbone's, see ``save``),
- ``trial.json``: the run, the parameters that rebuild the model, the class names,
- ``test_probabilities.npy``: what the trial predicted on its test images, so an export can be
  checked against the trial itself.

At the end of a sweep ``publish`` turns the leaders' folders into logged, exported and registered
models and deletes the others (a 52-trial ResNet50 grid would otherwise keep 52 × 94 MB).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from imagebench.store import record
from imagebench import store

FOLDER = "model"
META = "trial.json"
PROBABILITIES = "test_probabilities.npy"


def folder_of(experiment: str, run_name: str) -> Path:
    """Where the run named ``run_name`` kept its model (its record folder, see ``record.record_folder``)."""
    return record.run_record_folder(experiment, run_name) / FOLDER


def save(record_dir: Path, exporter, model, params, run_id: str, class_names: list[str], probabilities: np.ndarray,
         backbone_weights: Optional[Path] = None) -> Path:  # fmt: skip
    """Keep the trial's model (``model`` holds the validation-best weights); write-then-rename, so a
    trial killed while saving never leaves a folder that looks complete.

    With ``backbone_weights`` (a frozen backbone's file in the feature cache) ``model`` is the head:
    the folder keeps the head's weights and a hard link to the backbone's (a copy across file
    systems), so 52 head trials on one backbone neither build nor write it 52 times.
    """
    folder = Path(record_dir) / FOLDER
    partial = folder.with_name(FOLDER + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    if backbone_weights is None:
        exporter.save_trained(model, partial)
    else:
        exporter.save_head(model, partial)
        _link_or_copy(Path(backbone_weights), partial / exporter.BACKBONE_WEIGHTS)
    np.save(partial / PROBABILITIES, np.asarray(probabilities, dtype=np.float32))
    meta = {"run_id": run_id, "params": params.model_dump(mode="json"), "class_names": list(class_names)}
    (partial / META).write_text(json.dumps(meta, indent=1))
    shutil.rmtree(folder, ignore_errors=True)  # an earlier rung's model: this one continues it
    partial.rename(folder)
    return folder


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(source, target)


@dataclass
class KeptModel:
    folder: Path
    run_id: str
    params: dict[str, Any]
    class_names: list[str]

    @property
    def probabilities(self) -> np.ndarray:
        return np.load(self.folder / PROBABILITIES)


def load(folder: Path) -> KeptModel:
    meta = json.loads((Path(folder) / META).read_text())
    return KeptModel(Path(folder), meta["run_id"], meta["params"], meta["class_names"])


def is_complete(folder: Path) -> bool:
    return (Path(folder) / META).is_file() and (Path(folder) / PROBABILITIES).is_file()


def prune(experiment: str, keep: set[Path]) -> list[Path]:
    """Delete every kept model of ``experiment`` except those in ``keep``; returns what was deleted."""
    keep = {Path(path).resolve() for path in keep}
    deleted = []
    for folder in sorted(store.runs_dir(experiment).glob(f"*.record/{FOLDER}")):
        if folder.resolve() not in keep:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(folder)
    return deleted
