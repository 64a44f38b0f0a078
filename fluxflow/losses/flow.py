"""Rectified-flow objective (t = 1 is noise; see fluxflow/models/flow_processor.py for the convention)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class FlowObjective:
    """How the flow loss draws t and weights each sample's error. The defaults are the objective as it always was:
    t = sigmoid(N(0, 1)), no shift, no uniform share, every sample weighted 1."""

    logit_mean: float = 0.0  # t = sigmoid(N(logit_mean, logit_std²)): > 0 moves t towards noise
    logit_std: float = 1.0  # wider: more of t near both ends
    shift: float = 1.0  # SD3's t -> s·t / (1 + (s − 1)·t): s > 1 moves t towards noise (more noise per image)
    uniform_share: float = 0.0  # share of samples whose t is drawn uniformly instead (before the shift)
    weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: float = 5.0


DEFAULT_OBJECTIVE = FlowObjective()


def draw_timesteps(n: int, device: torch.device, generator: torch.Generator | None = None,
                   objective: FlowObjective = DEFAULT_OBJECTIVE) -> torch.Tensor:
    """t in (0, 1) per sample: logit-normal (sigmoid of a normal: most weight at mid noise levels), with a share
    `uniform_share` of the samples drawn uniformly instead, then shifted. The sampler starts at t = 1 (pure noise),
    where the standard logit-normal puts almost no weight (P(t > 0.98) ≈ 5e-5); the uniform share trains that end
    too. Drawn on the device with no host sync."""
    o = objective
    z = torch.randn(n, device=device, generator=generator)
    if (o.logit_mean, o.logit_std) != (0.0, 1.0):  # the defaults draw exactly the numbers they always drew
        z = z * o.logit_std + o.logit_mean
    t = torch.sigmoid(z)
    if o.uniform_share > 0:
        uniform = torch.rand(n, device=device, generator=generator)
        pick_uniform = torch.rand(n, device=device, generator=generator) < o.uniform_share
        t = torch.where(pick_uniform, uniform, t)
    if o.shift != 1.0:
        t = o.shift * t / (1.0 + (o.shift - 1.0) * t)
    return t


def min_snr_weight(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy") as a weight on
    this path's velocity error: min(SNR, γ)·t², with SNR(t) = ((1 − t)/t)² for x_t = (1 − t)·x0 + t·noise (t = 1 is
    noise). Min-SNR-γ weights the x0 error ‖x̂0 − x0‖² by min(SNR, γ) (the ε error by min(SNR, γ)/SNR); here
    x̂0 = x_t − t·v̂, so x̂0 − x0 = −t·(v̂ − v) and the x0 loss is t² times the velocity loss (and ε̂ − ε = (1 − t)·(v̂ − v),
    which gives the same weight). The form min(SNR, γ)/(SNR + 1) used before is the v-prediction weight of a
    variance-preserving diffusion (σ² = 1/(SNR + 1)), not of this path: it over-weighted mid t by up to 2x (t = 0.5).
    At most γ/(1 + √γ)², at SNR = γ (0.48 at γ = 5, t = 0.31); low where the target is nearly x0's own image (SNR > γ,
    t small: easy samples whose gradients conflict with the rest) and near pure noise (SNR → 0: weight (1 − t)²)."""
    snr = ((1.0 - t) / t).square()  # t = 0 gives inf, clamped to γ, times t² = 0: a weight of 0
    return snr.clamp(max=gamma) * t.square()


def rectified_flow_loss(model: nn.Module, x0: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                        pooled: torch.Tensor, drop: torch.Tensor | None,
                        generator: torch.Generator | None = None,
                        objective: FlowObjective = DEFAULT_OBJECTIVE) -> torch.Tensor:
    """MSE between the predicted and the true velocity v = noise − x0 at x_t = (1 − t)·x0 + t·noise, each sample's
    error weighted as `objective.weighting` says.

    t comes from `draw_timesteps`, one per sample; t and the noise are drawn on x0's device from `generator`.
    `drop` marks the rows trained unconditionally (CFG).
    """
    b = x0.shape[0]
    x0 = x0.float()
    t = draw_timesteps(b, x0.device, generator, objective)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    t_ = t.view(b, *([1] * (x0.dim() - 1)))
    x_t = (1.0 - t_) * x0 + t_ * noise
    v_pred = model(x_t, t, tokens, mask, pooled, drop)
    error = (v_pred.float() - (noise - x0)).square()
    if objective.weighting == "none":
        return error.mean()
    return (min_snr_weight(t, objective.min_snr_gamma).view_as(t_) * error).mean()
