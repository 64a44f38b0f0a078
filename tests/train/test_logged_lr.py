"""The JSONL's `lr_<group>` is the lr the schedule gave the interval's last update (fluxflow/train/trainer.py records
it, fluxflow/train/step_report.py logs it): a user can check a schedule from the metrics file."""
from __future__ import annotations

import functools
import json

import pytest
from helpers_tiny import one_torch_thread, tiny_config

from fluxflow.checkpoints.io import load_checkpoint, save_checkpoint
from fluxflow.output_layout import metrics_file
from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request, request_stop
from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.tracking import ConsoleJsonlTracker

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_logged_lr_follows_the_schedule_update_by_update(tmp_path):
    step = {"name": "s", "n_epochs": 2, "max_steps": 3, "train_vae": True, "gan_training": True,
            "optimization": {"optimizers": {"vae": {"lr": 0.01}, "discriminator": {"lr": 0.02}},
                             "schedulers": {"vae": {"type": "StepLR", "step_size": 2, "gamma": 0.5},
                                            "discriminator": {"type": "StepLR", "step_size": 1, "gamma": 0.5,
                                                              "interval": "epoch"}}}}
    run_pipeline(tiny_config(tmp_path, [step], dataset_size=16, no_samples=True, checkpoint_save_interval=100))
    lines = [json.loads(line)["metrics"] for line in metrics_file(tmp_path, "s").read_text().splitlines()]
    logged = [m for m in lines if "vae_loss" in m]  # the log lines of training (not the evaluation's)
    vae = [0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025]  # halved every 2 updates
    discriminator = [0.02] * 3 + [0.01] * 3  # halved at the epoch's end
    assert [m["lr_vae"] for m in logged] == pytest.approx(vae)
    assert [m["lr_discriminator"] for m in logged] == pytest.approx(discriminator)


class StopAfterBatch(ConsoleJsonlTracker):
    """Requests a stop, as the flow does on Ctrl-C, once the step has logged `batch` of its first epoch."""

    def __init__(self, out, batch: int):
        super().__init__(out)
        self.batch = batch

    def log_metrics(self, metrics, progress):
        super().log_metrics(metrics, progress)
        if (progress.epoch, progress.batch) == (1, self.batch):
            request_stop()


def logged_lines(out) -> list[tuple]:
    """The metrics file as (epoch, batch, global_step, metrics): what a user reads, without the timestamps."""
    records = map(json.loads, metrics_file(out, "s").read_text().splitlines())
    return [(r["epoch"], r["batch"], r["global_step"], r["metrics"]) for r in records]


ACCUMULATING = {"name": "s", "n_epochs": 1, "max_steps": 6, "train_vae": True, "gradient_accumulation_steps": 2,
               "optimization": {"optimizers": {"vae": {"lr": 0.01}},
                                "schedulers": {"vae": {"type": "StepLR", "step_size": 1, "gamma": 0.5}}}}
config = functools.partial(tiny_config, steps=[ACCUMULATING], no_samples=True, checkpoint_save_interval=100)


def stop_after_the_first_update(out) -> None:
    """Run into `out` until a stop request after batch 2, the first window's end: latest.pt holds batch 2."""
    clear_stop_request()
    try:
        with pytest.raises(StepInterrupted, match="s interrupted at epoch 1, batch 2"):
            run_pipeline(config(out), tracker=StopAfterBatch(out, 2))
    finally:
        clear_stop_request()


def test_a_run_resumed_between_accumulation_windows_logs_the_lr_of_the_last_update_as_an_uninterrupted_run(tmp_path):
    """The first batch after a resume is inside a window: no update yet in this process, but the lr of the update
    before the checkpoint is the `lr_<group>` an uninterrupted run logs there."""
    run_pipeline(config(tmp_path / "uninterrupted"))
    stop_after_the_first_update(tmp_path / "stopped")
    run_pipeline(config(tmp_path / "stopped"))

    assert logged_lines(tmp_path / "stopped")[2][3]["lr_vae"] == pytest.approx(0.01)  # batch 3: the first update's
    assert logged_lines(tmp_path / "stopped") == logged_lines(tmp_path / "uninterrupted")


def test_a_checkpoint_saved_without_the_last_lr_resumes_and_logs_the_lr_from_the_next_update(tmp_path):
    run_pipeline(config(tmp_path / "uninterrupted"))
    stop_after_the_first_update(tmp_path / "stopped")
    latest = tmp_path / "stopped" / "checkpoints" / "s" / "latest.pt"
    state = load_checkpoint(latest)
    del state["pipeline_metadata"]["last_lr"]  # as this product wrote it before the lr was saved
    save_checkpoint(state, latest)
    run_pipeline(config(tmp_path / "stopped"))

    resumed, uninterrupted = logged_lines(tmp_path / "stopped"), logged_lines(tmp_path / "uninterrupted")
    assert "lr_vae" not in resumed[2][3]  # batch 3: no update since the resume
    del uninterrupted[2][3]["lr_vae"]
    assert resumed == uninterrupted
