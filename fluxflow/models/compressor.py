"""VAE encoder ("compressor"): image [B, C, H, W] → latent mean and log-variance [B, c, H/f, W/f]."""
from __future__ import annotations

import torch
from torch import nn

from fluxflow.config.model_sizes import level_widths  # torch-free: the parameter counts use it too
from fluxflow.models.layers import ResBlock, group_norm


class Compressor(nn.Module):
    """Conv ResNet encoder: one ResBlock then a stride-2 conv per level, a middle block, a 3×3 head.

    `logvar` is clamped to [-30, 20] so that exp(logvar) stays finite in bf16/fp32 early in training.
    """

    def __init__(self, channels: int, vae_dim: int, latent_channels: int, downscale: int):
        super().__init__()
        widths = level_widths(vae_dim, downscale)
        self.conv_in = nn.Conv2d(channels, widths[0], 3, padding=1)
        blocks: list[nn.Module] = []
        prev = widths[0]
        for w in widths:
            blocks += [ResBlock(prev, w), nn.Conv2d(w, w, 3, stride=2, padding=1)]
            prev = w
        self.down = nn.Sequential(*blocks)
        self.mid = ResBlock(prev, prev)
        self.norm_out = group_norm(prev)
        self.conv_out = nn.Conv2d(prev, 2 * latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.mid(self.down(self.conv_in(x)))
        mean, logvar = self.conv_out(torch.nn.functional.silu(self.norm_out(h))).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


def sample_latent(mean: torch.Tensor, logvar: torch.Tensor,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Reparameterised draw z = mean + σ·ε, with ε drawn on the latent's device."""
    eps = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
    return mean + torch.exp(0.5 * logvar) * eps
