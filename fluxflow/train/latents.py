"""The one way images become flow latents and back: the compressor's posterior mean, normalised per channel.

The flow model trains on unit-scale latents; the per-channel shift/scale is measured once on the first batch of the
first flow step and then travels in the checkpoint (`latent_norm`), so generation decodes with the same numbers.
"""
from __future__ import annotations

import torch
from torch import nn


def measure_latent_norm(compressor: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        mean, _ = compressor(images)
        mean = mean.float()
        shift = mean.mean(dim=(0, 2, 3))
        scale = mean.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return {"shift": shift, "scale": scale}


def encode_latents(compressor: nn.Module, images: torch.Tensor, norm: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        mean, _ = compressor(images)
    return (mean.float() - norm["shift"].view(1, -1, 1, 1)) / norm["scale"].view(1, -1, 1, 1)


def decode_latents(expander: nn.Module, latents: torch.Tensor, norm: dict[str, torch.Tensor],
                   spade: bool) -> torch.Tensor:
    z = latents.float() * norm["scale"].view(1, -1, 1, 1) + norm["shift"].view(1, -1, 1, 1)
    with torch.no_grad():
        return expander(z, spade=spade).float().clamp(-1, 1)
