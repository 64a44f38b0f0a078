"""VAE decoder ("expander"): latent [B, c, h, w] → image [B, C, h·f, w·f], with optional SPADE conditioning.

SPADE here modulates the decoder's features at every resolution with a per-pixel scale γ and shift β predicted
from the latent map itself: h ← h·(1 + γ(z)) + β(z). The γ/β convs start at zero, so switching SPADE on
(`train_spade: true`) starts exactly from the unconditioned decoder and only learns a correction. There is no
normalisation inside the modulation for the same reason (a norm would change the output at init).
SPADE parameters live in `Expander.spade` (names start with `spade.`), so a step can train or freeze them alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fluxflow.config.model_sizes import level_widths
from fluxflow.models.layers import ResBlock, group_norm


class SpadeModulation(nn.Module):
    """Predicts γ, β for `feat_ch` feature channels from the latent map resized to the features' size."""

    def __init__(self, feat_ch: int, latent_ch: int, hidden: int):
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(latent_ch, hidden, 3, padding=1), nn.SiLU())
        self.gamma = nn.Conv2d(hidden, feat_ch, 3, padding=1)
        self.beta = nn.Conv2d(hidden, feat_ch, 3, padding=1)
        for conv in (self.gamma, self.beta):  # identity at init: spade on == spade off
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        z = F.interpolate(z, size=h.shape[-2:], mode="nearest")
        a = self.shared(z)
        return h * (1 + self.gamma(a)) + self.beta(a)


class Expander(nn.Module):
    """Mirror of the Compressor: middle block, then per level nearest ×2 upsample + conv + ResBlock."""

    def __init__(self, channels: int, vae_dim: int, latent_channels: int, downscale: int):
        super().__init__()
        widths = level_widths(vae_dim, downscale)[::-1]  # coarsest first
        self.conv_in = nn.Conv2d(latent_channels, widths[0], 3, padding=1)
        self.mid = ResBlock(widths[0], widths[0])
        self.ups = nn.ModuleList(nn.ModuleDict({"up": nn.Conv2d(prev, prev, 3, padding=1), "block": ResBlock(prev, w)})
                                 for prev, w in zip([widths[0], *widths], widths))
        # One modulation after the middle block and one after every level's block.
        hidden = max(16, vae_dim)
        self.spade = nn.ModuleList(SpadeModulation(w, latent_channels, hidden) for w in [widths[0], *widths])
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], channels, 3, padding=1)

    @property
    def last_layer_weight(self) -> nn.Parameter:
        """The output conv's weight: where `adaptive_weight` compares reconstruction and GAN gradients."""
        return self.conv_out.weight

    def forward(self, z: torch.Tensor, spade: bool = False) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        if spade:
            h = self.spade[0](h, z)
        for i, level in enumerate(self.ups):
            h = level["up"](F.interpolate(h, scale_factor=2.0, mode="nearest"))
            h = level["block"](h)
            if spade:
                h = self.spade[i + 1](h, z)
        return self.conv_out(F.silu(self.norm_out(h)))
