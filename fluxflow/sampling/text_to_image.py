"""Text → image with a trained pipeline: text encoder → flow sampler (CFG) → expander. Used by samples and
`fluxflow-generate`; the one place this composition lives."""
from __future__ import annotations

import torch
from torch import nn

from fluxflow.models.latents import decode_latents
from fluxflow.models import blank_caption_mask, sample_flow


@torch.no_grad()
def text_to_image(models: dict[str, nn.Module], captions: list[str], latent_norm: dict[str, torch.Tensor],
                  *, latent_size: int, steps: int = 25, guidance: float = 3.0, seed: int = 0,
                  spade: bool = False, shift: float = 1.0) -> torch.Tensor:
    """Images `[len(captions), C, H, W]` in [-1, 1]. `latent_size` is the latent's side (img_size / downscale).
    `shift`: the timestep shift the flow was trained with (its `flow_shift`), which the sampler's schedule follows."""
    flow, text_encoder = models["flow_processor"], models["text_encoder"]
    device = next(flow.parameters()).device
    ids, mask = text_encoder.tokenize(captions, device)
    tokens, pooled = text_encoder(ids, mask)
    channels = latent_norm["shift"].numel()
    generator = torch.Generator(device=device).manual_seed(seed)
    latents = sample_flow(flow, (len(captions), channels, latent_size, latent_size), tokens, mask, pooled,
                          steps=steps, guidance=guidance, shift=shift, generator=generator,
                          blank=blank_caption_mask(captions, device))  # as training conditions them
    return decode_latents(models["expander"], latents, {k: v.to(device) for k, v in latent_norm.items()}, spade)
