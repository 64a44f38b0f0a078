"""Euler sampler for the rectified-flow model (t = 1 noise → t = 0 data), with classifier-free guidance."""
from __future__ import annotations

import torch
from torch import nn


def sigma_schedule(steps: int, shift: float = 1.0, device: torch.device | str | None = None) -> torch.Tensor:
    """`steps + 1` times from 1 to 0: σ' = shift·σ / (1 + (shift − 1)·σ) on a uniform σ grid.

    shift = 1 is the uniform grid; shift > 1 spends more steps at high noise (useful at larger resolutions).
    """
    sigma = torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float32)
    return shift * sigma / (1 + (shift - 1) * sigma)


@torch.no_grad()
def sample_flow(model: nn.Module, shape: tuple[int, ...] | torch.Size, tokens: torch.Tensor, mask: torch.Tensor,
                pooled: torch.Tensor, steps: int = 30, guidance: float = 1.0, shift: float = 1.0,
                generator: torch.Generator | None = None, blank: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from pure noise at t = 1 down to t = 0 and return the latents x0.

    With guidance ≠ 1, each step runs one batched forward over [cond; uncond] rows (uncond = `drop=True`, the
    learned null text) and uses v = v_uncond + guidance·(v_cond − v_uncond). The starting noise is drawn from
    `generator` on the text's device, which makes samples reproducible across runs. `blank`: Bool[B], the rows whose
    caption is blank (flow_processor.blank_caption_mask), conditioned on the null text as training conditions them.
    """
    device = tokens.device
    x = torch.randn(tuple(shape), device=device, generator=generator)
    guided = guidance != 1.0
    drop = torch.arange(2 * x.shape[0], device=device) >= x.shape[0] if guided else blank  # 2nd half: unconditional
    if guided and blank is not None:
        drop = drop | torch.cat([blank, torch.zeros_like(blank)])
    if guided:
        tokens, mask, pooled = (torch.cat([a, a]) for a in (tokens, mask, pooled))
    times = sigma_schedule(steps, shift, device)
    for i in range(steps):
        t, dt = times[i], times[i + 1] - times[i]  # dt < 0: walking towards data
        x_in = torch.cat([x, x]) if guided else x
        v = model(x_in, t.expand(x_in.shape[0]), tokens, mask, pooled, drop).float()
        if guided:
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        x = x + dt * v
    return x
