"""One in-process torch trial on tiny data writes the documented MLflow record."""

import json

import pytest

from conftest import assert_documented_record, tiny_values
from imagebench import tracking
from imagebench.trial import run_trial

pytestmark = pytest.mark.torch


def test_in_process_trial_writes_the_documented_record(project):
    result = run_trial(tiny_values(framework="torch", model="cnn_attention", epochs=2, experiment="inproc"), verbose=False)
    assert_documented_record(result.run_id, num_classes=10)
    run = tracking.client().get_run(result.run_id)
    assert run.data.params["framework"] == "torch" and run.data.params["head_units"] == "128"
    class_map = json.loads(open(tracking.client().download_artifacts(result.run_id, tracking.ARTIFACT_CLASS_MAP)).read())
    assert class_map == {str(i): str(i) for i in range(10)}
    assert result.metrics["test/accuracy"] == pytest.approx(run.data.metrics["test/accuracy"])
    assert 1 <= result.metrics["best_epoch"] <= 2


def test_failing_trial_is_recorded_failed_with_the_reason(project, tmp_path):
    with pytest.raises(Exception):
        run_trial(tiny_values(framework="torch", dataset=str(tmp_path / "missing"), experiment="inproc"), verbose=False)
    runs = tracking.client().search_runs([tracking.experiment_id("inproc")])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert "neither a built-in name" in runs[0].data.tags[tracking.TAG_ERROR]
