"""Patch discriminator: image [B, C, H, W] → real/fake logits [B, 1, H/4, W/4].

No batch norm: R1 penalises the gradient of each sample's logits w.r.t. that sample alone, which batch
statistics would couple across the batch. GroupNorm is per sample and keeps that property.
"""
from __future__ import annotations

import torch
from torch import nn

from fluxflow.models.layers import group_norm


class Discriminator(nn.Module):
    def __init__(self, channels: int, dim: int):
        super().__init__()
        act = nn.LeakyReLU(0.2)
        self.net = nn.Sequential(
            nn.Conv2d(channels, dim, 4, stride=2, padding=1), act,
            nn.Conv2d(dim, 2 * dim, 4, stride=2, padding=1), group_norm(2 * dim), act,
            nn.Conv2d(2 * dim, 4 * dim, 3, padding=1), group_norm(4 * dim), act,
            nn.Conv2d(4 * dim, 1, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
