"""The same registry name means the same network in both frameworks: parameter counts agree.

Each framework is asked in its own process (`imagebench models`), as TF and torch never share one.
Totals may differ slightly: Keras counts BatchNorm moving statistics (and EfficientNet's input
Normalization) as non-trainable weights, torch keeps them as buffers, and Keras' ResNet50 convs
carry biases. Trainable counts of the plain CNNs and of VGG16 are identical.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from imagebench.models.registry import MODEL_NAMES

pytestmark = pytest.mark.slow
TOLERANCE = 0.02


def _counts(framework: str) -> dict[str, dict]:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "imagebench"), "models", "--framework", framework, "--json", "--image-size", "32"],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return {row["model"]: row for row in json.loads(done.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="module")
def counts():
    return {framework: _counts(framework) for framework in ("keras", "torch")}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts_agree_within_two_percent(counts, name):
    keras_total, torch_total = counts["keras"][name]["params"], counts["torch"][name]["params"]
    assert abs(keras_total - torch_total) / keras_total <= TOLERANCE, (keras_total, torch_total)


@pytest.mark.parametrize("name", ["cnn", "cnn_attention", "vgg16", "vgg16_attention"])
def test_identical_networks_have_identical_trainable_counts(counts, name):
    assert counts["keras"][name]["trainable"] == counts["torch"][name]["trainable"]
