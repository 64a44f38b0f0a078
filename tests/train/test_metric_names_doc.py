"""Every metric a step logs (to the JSONL file, the console and MLflow) is named in docs/CONFIG.md's "Metrics"
paragraph: a user reading a training_metrics_<step>.jsonl line finds each key explained there."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers_tiny import one_torch_thread, shapes_batches, single_step_config

from fluxflow.models.latents import measure_latent_norm
from fluxflow.train.trainer import build_trainer

__all__ = ["one_torch_thread"]

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"
STEPS = {
    "vae_gan_spade_image_stats": {"train_vae": True, "gan_training": True, "train_spade": True, "r1_interval": 1,
                                  "train_colorstats": True, "train_histogram": True, "train_contrast": True,
                                  "train_coarseness": True},
    "flow_and_text": {"train_diff_full": True},
}


def documented_metrics() -> set[str]:
    """The backticked names of the paragraph that starts with **Metrics**."""
    paragraph = DOC.read_text().split("**Metrics** a step produces", 1)[1].split("\n\n", 1)[0]
    return set(re.findall(r"`([a-z0-9_<>]+)`", paragraph))


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("step", STEPS.values(), ids=STEPS.keys())
def test_every_metric_a_batch_logs_is_documented(step):
    config, resolved = single_step_config(step)
    trainer = build_trainer(config, resolved, None, torch.device("cpu"), max_epochs=1)
    (images, captions), = shapes_batches(config, 1)
    if "flow_processor" in trainer.models:
        trainer.set_latent_norm(measure_latent_norm(trainer.ctx.latent_encoder, images))
    logged = set(trainer.train_batch(images, captions, 0, 0))
    logged |= {f"lr_{group}" for group in trainer.last_lr} | {"skipped_samples"}  # added by StepReport
    as_documented = {re.sub(r"^(grad_norm|lr)_\w+$", r"\1_<group>", name) for name in logged}
    assert as_documented - documented_metrics() == set()
