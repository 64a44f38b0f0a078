"""VAE objectives: reconstruction (L1 + MSE), KL to N(0, I) with free bits, and the KL warm-up weight."""
from __future__ import annotations

import torch


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor, l1_weight: float = 1.0,
                        mse_weight: float = 0.0) -> torch.Tensor:
    """l1_weight·mean|x̂ − x| + mse_weight·mean (x̂ − x)², computed in fp32."""
    diff = x_hat.float() - x.float()
    return l1_weight * diff.abs().mean() + mse_weight * diff.square().mean()


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor, free_bits: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(N(mean, e^logvar) ‖ N(0, 1)) in nats per latent position, summed over latent channels.

    Each channel's KL is averaged over batch and spatial positions; `raw` sums those per-channel values,
    `clamped` sums them after clamping each from below at `free_bits` (nats), so a channel whose KL is already
    under its budget gets no gradient pushing it to collapse further. Log `raw`; optimise `clamped`.
    """
    mean, logvar = mean.float(), logvar.float()
    per_element = 0.5 * (mean.square() + logvar.exp() - 1.0 - logvar)
    dims = [d for d in range(per_element.dim()) if d != 1]  # every dim but channels
    per_channel = per_element.mean(dim=dims)
    return per_channel.sum(), per_channel.clamp(min=free_bits).sum()


def kl_weight(global_step: int, beta: float, warmup_steps: int) -> float:
    """β ramped linearly from 0 at step 0 to β at `warmup_steps` (constant β when warmup_steps ≤ 0)."""
    if warmup_steps <= 0:
        return float(beta)
    return float(beta) * min(1.0, max(0, global_step) / warmup_steps)
