"""Shared fixtures. TensorFlow and torch never share a test process: `make test` runs the keras- and
torch-marked tests in sessions of their own; a plain `pytest` that collects both skips torch's."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_collection_modifyitems(config, items):
    has_keras = any(item.get_closest_marker("keras") for item in items)
    has_torch = any(item.get_closest_marker("torch") for item in items)
    if has_keras and has_torch:
        skip = pytest.mark.skip(reason="TF and torch in one process can segfault: run `pytest -m torch` on its own (make test does)")
        for item in items:
            if item.get_closest_marker("torch"):
                item.add_marker(skip)


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A throw-away imagebench project: notebooks and params copied, its own MLflow store."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "notebooks", root / "notebooks")
    shutil.copytree(REPO / "params", root / "params")
    monkeypatch.setenv("IMAGEBENCH_ROOT", str(root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    monkeypatch.delenv("IMAGEBENCH_RUN_ID", raising=False)
    monkeypatch.chdir(root)
    return root


def tiny_values(**overrides):
    """Trial values that train in seconds on the built-in digits."""
    values = dict(dataset="digits", image_size=32, epochs=1, batch_size=64, max_per_class=12, val_fraction=0.25, test_fraction=0.25)
    values.update(overrides)
    return values
