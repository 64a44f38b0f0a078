"""Transition criteria: the smoothed-metric monitor on its own, then `loss_threshold` steps through the real runner
(met before max_epochs, max_epochs reached with a warning, `on_missed: fail` stopping its subtree)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from helpers_tiny import one_torch_thread, tiny_config

from fluxflow.config.modes import ALL_METRICS
from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.transition import TransitionMonitor

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def threshold(metric="vae_loss", value=0.5, max_epochs=3, window=4):
    return SimpleNamespace(mode="loss_threshold", metric=metric, threshold=value, max_epochs=max_epochs,
                           window=window)


def feed(monitor: TransitionMonitor, metric: str, values: list[float]) -> None:
    for v in values:
        monitor.observe({metric: torch.tensor(v), "other_loss": torch.tensor(99.0)})


def test_epoch_mode_ends_after_n_epochs():
    monitor = TransitionMonitor(SimpleNamespace(mode="epoch", metric=None, threshold=None, max_epochs=None,
                                                window=None), n_epochs=3, device=torch.device("cpu"))
    feed(monitor, "vae_loss", [0.0] * 4)
    assert [monitor.outcome_after_epoch(e, monitor.smoothed()) for e in (1, 2, 3)] == [None, None, "epochs_done"]
    assert monitor.smoothed() is None


@pytest.mark.parametrize("metric", ALL_METRICS)
def test_threshold_met_when_the_moving_average_of_any_metric_drops_below(metric):
    monitor = TransitionMonitor(threshold(metric, 0.5, max_epochs=5, window=4), n_epochs=5,
                                device=torch.device("cpu"))
    feed(monitor, metric, [1.0, 1.0, 1.0, 1.0])  # epoch 1: mean 1.0
    assert monitor.outcome_after_epoch(1, monitor.smoothed()) is None
    feed(monitor, metric, [0.2, 0.2])  # window [1, 1, .2, .2]: mean 0.6, still above
    assert monitor.outcome_after_epoch(2, monitor.smoothed()) is None
    feed(monitor, metric, [0.2, 0.2])  # window [.2, .2, .2, .2]: the old values have left it
    assert monitor.smoothed() == pytest.approx(0.2)
    assert monitor.outcome_after_epoch(3, monitor.smoothed()) == "met"


def test_smoothing_is_the_mean_of_the_last_window_batches_only():
    monitor = TransitionMonitor(threshold(window=3), n_epochs=3, device=torch.device("cpu"))
    feed(monitor, "vae_loss", [2.0])
    assert monitor.smoothed() == pytest.approx(2.0)  # fewer batches than the window: mean of those seen
    feed(monitor, "vae_loss", [10.0, 10.0, 1.0, 2.0, 3.0])
    assert monitor.smoothed() == pytest.approx(2.0)


def test_threshold_missed_ends_at_max_epochs():
    monitor = TransitionMonitor(threshold(value=0.1, max_epochs=2), n_epochs=7, device=torch.device("cpu"))
    feed(monitor, "vae_loss", [1.0] * 4)
    assert monitor.outcome_after_epoch(1, monitor.smoothed()) is None
    assert monitor.outcome_after_epoch(2, monitor.smoothed()) == "max_epochs_reached"


def test_monitor_state_round_trip_continues_the_same_window():
    a = TransitionMonitor(threshold(window=4), n_epochs=3, device=torch.device("cpu"))
    feed(a, "vae_loss", [5.0, 1.0, 1.0])
    b = TransitionMonitor(threshold(window=4), n_epochs=3, device=torch.device("cpu"))
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        feed(m, "vae_loss", [0.1, 0.1])
    assert a.smoothed() == b.smoothed() == pytest.approx((1.0 + 1.0 + 0.1 + 0.1) / 4)


def test_config_window_defaults_to_twenty_batches(tmp_path):
    config = tiny_config(tmp_path, [{"name": "s", "n_epochs": 2, "train_vae": True,
                                     "transition_on": {"mode": "loss_threshold", "metric": "vae_loss",
                                                       "threshold": 0.1}}])
    step = config.resolved_steps()[0]
    monitor = TransitionMonitor(step.transition_on, step.n_epochs, torch.device("cpu"))
    assert (monitor.window, monitor.max_epochs) == (20, 2)


# ---------------------------------------------------------------------------------------------- through the runner

def threshold_step(name: str, metric: str, value: float, max_epochs: int, **extra) -> dict:
    return {"name": name, "n_epochs": 1, "max_steps": 2, "train_vae": True,
            "transition_on": {"mode": "loss_threshold", "metric": metric, "threshold": value,
                              "max_epochs": max_epochs, "window": 2}, **extra}


def test_loss_threshold_met_before_max_epochs(tmp_path):
    config = tiny_config(tmp_path / "out", [threshold_step("warm", "kl_loss", 1e6, max_epochs=4)], no_samples=True)
    [outcome] = run_pipeline(config)
    assert outcome.result.outcome == "met"
    assert outcome.result.epochs_done == 1
    assert outcome.ref.global_step == 2 and outcome.ref.epoch == 1
    assert outcome.result.final_metrics["smoothed_kl_loss"] < 1e6


def test_loss_threshold_missed_moves_on_at_max_epochs_with_a_warning(tmp_path, caplog):
    steps = [threshold_step("warm", "vae_loss", 1e-9, max_epochs=2),
             {"name": "next", "n_epochs": 1, "max_steps": 1, "train_vae": True}]
    config = tiny_config(tmp_path / "out", steps, no_samples=True)
    with caplog.at_level(logging.WARNING):
        first, second = run_pipeline(config)
    assert (first.result.outcome, first.result.epochs_done, first.ref.global_step) == ("max_epochs_reached", 2, 4)
    assert first.result.final_metrics["smoothed_vae_loss"] > 1e-9
    assert any("warm" in r.getMessage() and "max_epochs=2" in r.getMessage() for r in caplog.records)
    assert second.result.trained  # on_missed: continue (the default)


def test_loss_threshold_missed_with_on_missed_fail_stops_its_subtree_and_fails_the_pipeline(tmp_path, caplog):
    steps = [{"name": "base", "n_epochs": 1, "max_steps": 1, "train_vae": True},
             threshold_step("warm", "vae_loss", 1e-9, max_epochs=1, on_missed="fail"),
             {"name": "next", "n_epochs": 1, "max_steps": 1, "train_vae": True},
             {"name": "other", "after": "base", "n_epochs": 1, "max_steps": 1, "train_vae": True}]
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING), \
            pytest.raises(RuntimeError, match=r"^Step warm: vae_loss did not fall below 1e-09 within 1 epoch "):
        run_pipeline(tiny_config(out, steps, no_samples=True))
    warned = [r.getMessage() for r in caplog.records if "max_epochs=1" in r.getMessage()]
    assert warned and all("moving on" not in line and "on_missed: fail" in line for line in warned)  # said 'moving on'
    assert (out / "checkpoints" / "warm" / "final.pt").exists()  # the step's work is kept
    assert not (out / "checkpoints" / "next").exists()  # its subtree never started
    assert (out / "checkpoints" / "other" / "final.pt").exists()  # the sibling branch ran (the flow's rule)
