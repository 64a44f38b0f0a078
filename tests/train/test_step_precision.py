"""A step's own `precision`: a CPU pipeline can train its VAE warm-up in bf16 (faster there) and its flow step in fp32
(where bf16 is not faster: docs/PERFORMANCE.md), and the choice, like training.precision, retrains nothing."""
from __future__ import annotations

import torch
from helpers_tiny import step_keys, tiny_config

from fluxflow.train.trainer import build_trainer

STEPS = [{"name": "warmup", "n_epochs": 1, "train_vae": True, "precision": "bf16"},
         {"name": "flow", "n_epochs": 1, "train_diff": True}]
WITHOUT = [{k: v for k, v in step.items() if k != "precision"} for step in STEPS]  # every step at training.precision


def _autocast_of(config, name: str):
    step = config.step(name)
    return build_trainer(config, step, None, torch.device("cpu"), max_epochs=1).ctx.amp_dtype


def test_a_step_trains_at_its_own_precision_and_the_others_at_training_precision(tmp_path):
    config = tiny_config(tmp_path, STEPS, precision="fp32")
    assert [s.precision for s in config.resolved_steps()] == ["bf16", "fp32"]
    assert _autocast_of(config, "warmup") == torch.bfloat16
    assert _autocast_of(config, "flow") is None  # fp32: no autocast
    everywhere = tiny_config(tmp_path, WITHOUT, precision="bf16")
    assert [s.precision for s in everywhere.resolved_steps()] == ["bf16", "bf16"]


def test_precision_is_not_part_of_the_step_key(tmp_path):
    per_step = step_keys(tiny_config(tmp_path, STEPS, precision="fp32"))
    without = step_keys(tiny_config(tmp_path, WITHOUT, precision="fp32"))
    assert per_step == without
