"""A loss weight of 0 turns its term off: `lambda_adv: 0` (`lambda_lpips: 0`) still logs g_loss (lpips_loss), but the
term takes no part in the VAE's update (fluxflow/train/batch_step.py), not even through a non-finite value."""
from __future__ import annotations

import math

import pytest
import torch
from helpers_tiny import changed_components, one_torch_thread, shapes_batches, snapshot, step_context

from fluxflow.train.batch_step import train_vae_batch

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def poisoned_gan_step(lambda_adv: float):
    """A VAE+GAN step whose discriminator outputs +inf: its generator loss is -inf, its own update is skipped."""
    ctx, config = step_context({"train_vae": True, "gan_training": True, "lambda_adv": lambda_adv})
    with torch.no_grad():
        for p in ctx.models["discriminator"].parameters():
            if p.ndim == 1:  # biases: every logit becomes +inf
                p.fill_(float("inf"))
    return ctx, config


def test_lambda_adv_zero_keeps_a_non_finite_generator_loss_out_of_the_vae_update():
    ctx, config = poisoned_gan_step(0.0)
    images, _ = shapes_batches(config, 1)[0]
    before = snapshot(ctx.models)
    metrics = train_vae_batch(ctx, images, update=0)
    assert not math.isfinite(metrics["g_loss"].item())  # still measured and logged
    assert changed_components(before, ctx.models) == {"compressor", "expander"}  # the VAE trained; D skipped
    assert metrics["skipped_updates"].item() == 1.0  # D's update only


def test_a_non_zero_lambda_adv_still_applies_the_generator_term():
    ctx, config = poisoned_gan_step(0.5)
    images, _ = shapes_batches(config, 1)[0]
    before = snapshot(ctx.models)
    metrics = train_vae_batch(ctx, images, update=0)
    assert changed_components(before, ctx.models) == set()  # -inf in the VAE loss: both updates skipped
    assert metrics["skipped_updates"].item() == 2.0


class InfinitePerceptual(torch.nn.Module):
    """LPIPS's place (the real one needs the AlexNet file), returning +inf with a graph back to the reconstruction."""

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_hat - x).mean(dim=(1, 2, 3)) * 0.0 + float("inf")


@pytest.mark.parametrize("lambda_lpips, trained", [(0.0, {"compressor", "expander"}), (0.1, set())])
def test_lambda_lpips_zero_keeps_lpips_out_of_the_vae_update(lambda_lpips, trained):
    ctx, config = step_context({"train_vae": True, "lambda_lpips": lambda_lpips})
    ctx.lpips = InfinitePerceptual()
    images, _ = shapes_batches(config, 1)[0]
    before = snapshot(ctx.models)
    metrics = train_vae_batch(ctx, images, update=0)
    assert metrics["lpips_loss"].item() == float("inf")  # measured and logged either way
    assert changed_components(before, ctx.models) == trained
