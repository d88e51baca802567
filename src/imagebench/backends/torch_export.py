"""PyTorch side of publishing a leader (see ``imagebench.report.publish``): keep, restore, export, log.

Every export takes what the trial took, 0-255 RGB pixels (N, S, S, 3), as float32 (ONNX and MLflow
signatures are typed; the model's own preprocessing is inside) and returns class probabilities.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from imagebench import store
from imagebench.backends.torch_models import build_model, head_model
from imagebench.core.params import make_params

WEIGHTS = "weights.pt"
# A frozen-backbone trial on cached features keeps its head and the backbone's (shared) weights instead
HEAD_WEIGHTS = "head.pt"
BACKBONE_WEIGHTS = "backbone.pt"
NATIVE = "model.pt2"  # torch.export's program: loads without imagebench installed
ONNX = "model.onnx"
REQUIREMENTS = ("torch", "timm", "numpy")


class Probabilities(nn.Module):
    """The classifier with softmax on top: the exports give probabilities like the Keras ones."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(pixels), dim=1)


def save_trained(model: nn.Module, folder: Path) -> None:
    torch.save(model.state_dict(), Path(folder) / WEIGHTS)


def save_head(head: nn.Module, folder: Path) -> None:
    torch.save(head.state_dict(), Path(folder) / HEAD_WEIGHTS)  # keys as in the whole model (HeadOnly)


def save_backbone(model: nn.Module, path: Path) -> None:
    """The whole model's state except the head's: with a head's state it loads into a whole model."""
    head_keys = set(head_model(model).state_dict())
    torch.save({key: value for key, value in model.state_dict().items() if key not in head_keys}, path)


def _kept_state(folder: Path) -> dict:
    def load(name: str) -> dict:
        return torch.load(folder / name, map_location="cpu", weights_only=True)

    if (folder / HEAD_WEIGHTS).is_file():
        return {**load(BACKBONE_WEIGHTS), **load(HEAD_WEIGHTS)}
    return load(WEIGHTS)


def load_trained(params: dict, num_classes: int, folder: Path) -> nn.Module:
    """The trial's model with its kept weights (whole, or head + backbone); built without pretrained
    weights (they are overwritten)."""
    model = build_model(make_params({**params, "weights": "none"}), num_classes)
    model.load_state_dict(_kept_state(Path(folder)))  # strict: every key, from one file or the two
    return Probabilities(model.cpu().eval())


def _program(model: nn.Module, example: np.ndarray) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=65536)
    return torch.export.export(model, (torch.as_tensor(example),), dynamic_shapes=({0: batch},))


def export_files(model: nn.Module, example: np.ndarray, folder: Path) -> dict[str, Path]:
    """``model.pt2`` (torch.export) and ``model.onnx`` (the dynamo exporter, from the same program)."""
    program = _program(model, example)
    torch.export.save(program, Path(folder) / NATIVE)
    with contextlib.redirect_stdout(io.StringIO()):  # the exporter narrates each step
        torch.onnx.export(program, (torch.as_tensor(example),), str(Path(folder) / ONNX), input_names=["pixels"],
                          output_names=["probabilities"], dynamo=True, external_data=False, verbose=False)  # fmt: skip
    return {"pt2": Path(folder) / NATIVE, "onnx": Path(folder) / ONNX}


def native_predictor(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    module = torch.export.load(str(path)).module()

    def predict(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.as_tensor(pixels)).numpy()

    return predict


def predictor(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    def predict(pixels: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.as_tensor(pixels)).numpy()

    return predict


def log_mlflow_model(model: nn.Module, run_id: str, signature, example: np.ndarray) -> str:
    """The PyTorch flavour, serialized as a torch.export program (no pickled imagebench classes)."""
    import mlflow.pytorch

    requirements = store.pinned_requirements(list(REQUIREMENTS))
    info = mlflow.pytorch.log_model(model, name=store.LOGGED_MODEL_NAME, signature=signature, input_example=example,
                                    run_id=run_id, serialization_format="pt2", pip_requirements=requirements)  # fmt: skip
    return info.model_uri
