"""Schedules and early stopping, shared by both frameworks."""

import math

import pytest

from imagebench.training.monitor import EpochMonitor, EpochRecord
from imagebench.core.params import make_params


def _record(epoch, val_loss, val_acc=0.5, lr=0.1):
    return EpochRecord(epoch, 1.0, 0.5, val_loss, val_acc, lr)


def test_step_schedule_halves_every_n_epochs():
    monitor = EpochMonitor(make_params(learning_rate=0.1, lr_schedule="step", lr_step_epochs=7, lr_decay_factor=0.5))
    assert [monitor.lr_for_epoch(e) for e in (1, 7, 8, 14, 15)] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])


def test_cosine_starts_at_lr_and_decays_monotonically():
    monitor = EpochMonitor(make_params(learning_rate=0.1, lr_schedule="cosine", epochs=10))
    rates = [monitor.lr_for_epoch(e) for e in range(1, 11)]
    assert rates[0] == pytest.approx(0.1) and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] > 0


def test_plateau_drops_lr_after_patience_epochs_without_improvement():
    monitor = EpochMonitor(make_params(learning_rate=0.1, lr_schedule="plateau", lr_plateau_patience=2, lr_decay_factor=0.3,
                                       early_stopping_patience=0))
    for epoch, loss in enumerate([1.0, 1.1, 1.2, 1.3], start=1):
        assert monitor.lr_for_epoch(epoch) == pytest.approx(0.1 if epoch <= 3 else 0.03)
        monitor.end_epoch(_record(epoch, loss))


def test_early_stopping_on_val_loss_keeps_the_best_epoch():
    monitor = EpochMonitor(make_params(early_stopping_patience=2))
    improved = [monitor.end_epoch(_record(e, loss)) for e, loss in enumerate([1.0, 0.8, 0.9, 0.85], start=1)]
    assert improved == [True, True, False, False]
    assert monitor.should_stop and monitor.best_epoch == 2


def test_early_stopping_on_val_accuracy():
    monitor = EpochMonitor(make_params(early_stopping_patience=1, early_stopping_monitor="val_accuracy"))
    monitor.end_epoch(_record(1, 1.0, val_acc=0.5))
    monitor.end_epoch(_record(2, 0.1, val_acc=0.5))  # lower loss, same accuracy: no improvement
    assert monitor.should_stop and monitor.best_epoch == 1


def test_patience_zero_never_stops_and_diverged_epochs_never_win():
    monitor = EpochMonitor(make_params(early_stopping_patience=0))
    monitor.end_epoch(_record(1, 0.5))
    for epoch in range(2, 20):
        monitor.end_epoch(_record(epoch, math.inf))
    assert not monitor.should_stop and monitor.best_epoch == 1


def test_every_epoch_is_reported():
    seen = []
    monitor = EpochMonitor(make_params(), on_epoch=seen.append)
    monitor.end_epoch(_record(1, 0.5))
    assert [r.epoch for r in seen] == [1] and seen[0].as_metrics()["val/loss"] == 0.5


def test_state_round_trip_continues_plateau_and_patience_where_it_stopped():
    params = make_params(learning_rate=0.1, lr_schedule="plateau", lr_plateau_patience=2, early_stopping_patience=3, epochs=10)
    whole, first = EpochMonitor(params), EpochMonitor(params)
    losses = [1.0, 0.9, 0.95, 0.96, 0.97, 0.98]
    for epoch, loss in enumerate(losses[:3], start=1):
        for monitor in (whole, first):
            monitor.end_epoch(_record(epoch, loss, lr=monitor.lr_for_epoch(epoch)))
    continued = EpochMonitor(params)
    continued.load_state(first.state())
    assert continued.next_epoch == 4 and continued.best_epoch == 2
    for epoch, loss in enumerate(losses[3:], start=4):
        for monitor in (whole, continued):
            monitor.end_epoch(_record(epoch, loss, lr=monitor.lr_for_epoch(epoch)))
    assert continued.state() == whole.state() and continued.should_stop and whole.should_stop
    assert not continued.has_epochs_left(None) and continued.last_epoch(3) == 3


def test_epoch_budget_caps_the_epochs_trained():
    monitor = EpochMonitor(make_params(epochs=9))
    assert monitor.last_epoch(3) == 3 and monitor.last_epoch(None) == 9 and monitor.last_epoch(50) == 9
    assert monitor.has_epochs_left(1)
    monitor.end_epoch(_record(1, 1.0))
    assert not monitor.has_epochs_left(1) and monitor.has_epochs_left(3)
