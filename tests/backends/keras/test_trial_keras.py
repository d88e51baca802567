"""One in-process keras trial on tiny data writes the documented MLflow record."""

import pytest
from trial_checks import (
    check_continued_trial_equals_uninterrupted,
    check_failing_trial_recorded,
    check_feature_cache_matches_uncached,
    check_in_process_trial,
    check_speed_switches_train,
    check_test_numbers_come_from_the_best_epoch,
)

pytestmark = pytest.mark.keras


def test_in_process_trial_writes_the_documented_record(project):
    check_in_process_trial("keras")


def test_failing_trial_is_recorded_failed_with_the_reason(project, tmp_path):
    check_failing_trial_recorded("keras", tmp_path / "missing")


def test_continued_trial_equals_uninterrupted(project, tmp_path):
    check_continued_trial_equals_uninterrupted("keras", tmp_path)


def test_feature_cache_matches_the_uncached_path(project, monkeypatch):
    check_feature_cache_matches_uncached("keras", monkeypatch)


def test_gpu_speed_switches_train_on_cpu(project):
    check_speed_switches_train("keras")


def test_test_numbers_and_kept_model_come_from_the_best_epoch(project):
    check_test_numbers_come_from_the_best_epoch("keras")
