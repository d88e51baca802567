"""Pretrained weights are checked on disk before a sweep starts (nothing can be downloaded)."""

import subprocess
import sys
from pathlib import Path

import pytest

from imagebench.core.params import make_params
from imagebench.training.weights import WeightsError, check_weights, require_weights


@pytest.fixture
def caches(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


def test_none_and_cnn_never_need_weights(caches):
    assert check_weights([make_params(model="cnn"), make_params(model="vgg16", weights="none")]) == []


def test_missing_imagenet_weights_name_models_and_places(caches):
    trials = [make_params(model=m, framework=f, weights="imagenet") for m in ("vgg16", "resnet50_attention") for f in ("keras", "torch")]
    problems = check_weights(trials)
    assert len(problems) == 4
    assert any("keras/vgg16" in p and "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in p for p in problems)
    assert any("torch/resnet50_attention" in p and "models--timm--resnet50.a1_in1k" in p for p in problems)
    with pytest.raises(WeightsError, match="weights: none trains from scratch"):
        require_weights(trials)


def test_cached_weights_are_found(caches):
    keras_file = caches / "keras" / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    keras_file.parent.mkdir(parents=True)
    keras_file.write_bytes(b"h5")
    snapshot = caches / "hf" / "models--timm--efficientnet_b0.ra_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (snapshot / "model.safetensors").write_bytes(b"st")
    assert check_weights([make_params(model="resnet50", weights="imagenet"),
                          make_params(model="efficientnet_b0_attention", framework="torch", weights="imagenet")]) == []


def test_weights_path_must_exist(caches, tmp_path):
    assert "does not exist" in check_weights([make_params(model="vgg16", weights=str(tmp_path / "nope.h5"))])[0]
    (tmp_path / "w.h5").write_bytes(b"x")
    assert check_weights([make_params(model="vgg16", weights=str(tmp_path / "w.h5"))]) == []


def test_sweep_refuses_to_start_without_weights(caches, project):
    (project / "params" / "pre.yaml").write_text("base: {weights: imagenet}\nmatrix: {model: [cnn_attention, resnet50]}\n"
                                                 "exclude: [{model: cnn_attention}]\n")
    done = subprocess.run([str(Path(sys.executable).parent / "imagebench"), "sweep", "params/pre.yaml"],
                          cwd=project, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "keras/resnet50: no ImageNet weights" in done.stderr
    assert not (project / "mlflow.db").exists()  # refused before any run was created
