"""Rectified-flow objective (t = 1 is noise; see fluxflow/models/flow_processor.py for the convention)."""
from __future__ import annotations

import torch
from torch import nn


def rectified_flow_loss(model: nn.Module, x0: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                        pooled: torch.Tensor, drop: torch.Tensor | None,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """MSE between the predicted and the true velocity v = noise − x0 at x_t = (1 − t)·x0 + t·noise.

    t is logit-normal (sigmoid of a standard normal: most weight at mid noise levels), one per sample; t and
    the noise are drawn on x0's device from `generator`. `drop` marks the rows trained unconditionally (CFG).
    """
    b = x0.shape[0]
    x0 = x0.float()
    t = torch.sigmoid(torch.randn(b, device=x0.device, generator=generator))
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    t_ = t.view(b, *([1] * (x0.dim() - 1)))
    x_t = (1.0 - t_) * x0 + t_ * noise
    v_pred = model(x_t, t, tokens, mask, pooled, drop)
    return (v_pred.float() - (noise - x0)).square().mean()
