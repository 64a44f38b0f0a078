"""The JSONL's `lr_<group>` is the lr the schedule gave the interval's last update (fluxflow/train/trainer.py records
it, fluxflow/train/step_report.py logs it): a user can check a schedule from the metrics file."""
from __future__ import annotations

import json

import pytest
from helpers_tiny import one_torch_thread, tiny_config

from fluxflow.output_layout import metrics_file
from fluxflow.train.pipeline import run_pipeline

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
