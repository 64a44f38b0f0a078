"""Rectified-flow objective (t = 1 is noise; see fluxflow/models/flow_processor.py for the convention)."""
from __future__ import annotations

import torch
from torch import nn


def draw_timesteps(n: int, device: torch.device, generator: torch.Generator | None = None,
                   uniform_share: float = 0.0) -> torch.Tensor:
    """t in (0, 1) per sample: logit-normal (sigmoid of a standard normal: most weight at mid noise levels), with a
    share `uniform_share` of the samples drawn uniformly instead. The sampler starts at t = 1 (pure noise), where
    the logit-normal puts almost no weight (P(t > 0.98) ≈ 5e-5); the uniform share trains that end too. Drawn on
    the device with no host sync."""
    logit_normal = torch.sigmoid(torch.randn(n, device=device, generator=generator))
    if uniform_share <= 0:
        return logit_normal
    uniform = torch.rand(n, device=device, generator=generator)
    pick_uniform = torch.rand(n, device=device, generator=generator) < uniform_share
    return torch.where(pick_uniform, uniform, logit_normal)


def rectified_flow_loss(model: nn.Module, x0: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                        pooled: torch.Tensor, drop: torch.Tensor | None,
                        generator: torch.Generator | None = None, uniform_t_share: float = 0.0) -> torch.Tensor:
    """MSE between the predicted and the true velocity v = noise − x0 at x_t = (1 − t)·x0 + t·noise.

    t comes from `draw_timesteps`, one per sample; t and the noise are drawn on x0's device from `generator`.
    `drop` marks the rows trained unconditionally (CFG).
    """
    b = x0.shape[0]
    x0 = x0.float()
    t = draw_timesteps(b, x0.device, generator, uniform_t_share)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    t_ = t.view(b, *([1] * (x0.dim() - 1)))
    x_t = (1.0 - t_) * x0 + t_ * noise
    v_pred = model(x_t, t, tokens, mask, pooled, drop)
    return (v_pred.float() - (noise - x0)).square().mean()
