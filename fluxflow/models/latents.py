"""The one way images become flow latents and back: the compressor's posterior mean, normalised per channel.

The flow model trains on unit-scale latents; the per-channel shift/scale is measured once, on the first
LATENT_NORM_IMAGES training images of the first flow step, and then travels in the checkpoint (`latent_norm`), so
generation decodes with the same numbers. Encoding and decoding use the same VAE weights: the EMA ones where the
checkpoint has them (the weights samples and `fluxflow-generate` decode with).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from fluxflow.runtime.device import autocast

# Enough images for per-channel statistics that hold on real data (one batch of 32 does not), cheap to encode once.
LATENT_NORM_IMAGES = 1024


def measure_latent_norm(encoder: nn.Module, batches: torch.Tensor | Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per-channel mean (`shift`) and standard deviation (`scale`) of the encoder's posterior means over `batches`
    (image batches; one tensor is one batch)."""
    if isinstance(batches, torch.Tensor):
        batches = [batches]
    return latent_norm_of_means(posterior(encoder, images)[0] for images in batches)


def latent_norm_of_means(means: Iterable[torch.Tensor]) -> dict[str, torch.Tensor]:
    """`measure_latent_norm` on posterior means already computed (by the encoder or read from the latent cache).
    Sums are taken in float64, so many batches add up without drift."""
    sums, squares, count = 0, 0, 0
    for mean in means:
        mean = mean.double()
        sums, squares = sums + mean.sum(dim=(0, 2, 3)), squares + mean.square().sum(dim=(0, 2, 3))
        count += mean.numel() // mean.shape[1]
    if count < 2:
        raise ValueError("measuring the latent normalisation needs at least two latent positions")
    shift = sums / count
    variance = (squares / count - shift.square()).clamp_min(0) * count / (count - 1)  # unbiased, as torch.std
    return {"shift": shift.float(), "scale": variance.sqrt().float().clamp_min(1e-3)}


def posterior(compressor: nn.Module, images: torch.Tensor,
              amp_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The compressor's posterior (mean, log-variance) of `images` in float32, without a graph: the one encode of
    flow latents, on the fly and for the latent cache (fluxflow/cache/latent_cache.py). The frozen encoder runs
    under autocast in `amp_dtype` (bf16 on CUDA, as the training step does)."""
    with torch.no_grad(), autocast(images.device, amp_dtype):
        mean, logvar = compressor(images)
    return mean.float(), logvar.float()


def normalise_latents(mean: torch.Tensor, norm: dict[str, torch.Tensor]) -> torch.Tensor:
    """Posterior means (on the fly or cached) -> the unit-scale latents the flow model trains on."""
    return (mean.float() - norm["shift"].view(1, -1, 1, 1)) / norm["scale"].view(1, -1, 1, 1)


def decode_latents(expander: nn.Module, latents: torch.Tensor, norm: dict[str, torch.Tensor],
                   spade: bool) -> torch.Tensor:
    z = latents.float() * norm["scale"].view(1, -1, 1, 1) + norm["shift"].view(1, -1, 1, 1)
    with torch.no_grad():
        return expander(z, spade=spade).float().clamp(-1, 1)
