"""The five trainable components, built by name from the `model:` config section."""
from __future__ import annotations

from typing import Any

from torch import nn

from fluxflow.models.compressor import Compressor, sample_latent
from fluxflow.models.discriminator import Discriminator
from fluxflow.models.expander import Expander
from fluxflow.models.flow_processor import FlowProcessor, cfg_drop_mask
from fluxflow.models.flow_sampler import sample_flow, sigma_schedule
from fluxflow.models.text_encoder import TextEncoder, tokenize

COMPONENTS = ("compressor", "expander", "flow_processor", "text_encoder", "discriminator")


def build_component(name: str, model_cfg: Any, channels: int) -> nn.Module:
    """Build component `name` sized from `model_cfg` (any object with the ModelConfig attributes)."""
    m = model_cfg
    if name == "compressor":
        return Compressor(channels, m.vae_dim, m.latent_channels, m.downscale)
    if name == "expander":
        return Expander(channels, m.vae_dim, m.latent_channels, m.downscale)
    if name == "flow_processor":
        return FlowProcessor(m.latent_channels, m.feature_maps_dim, m.flow_depth, m.flow_heads, m.patch_size,
                             m.text_embedding_dim, m.text_max_len)
    if name == "text_encoder":
        return TextEncoder(m.text_embedding_dim, m.text_encoder_depth, m.text_max_len)
    if name == "discriminator":
        return Discriminator(channels, m.feature_maps_dim_disc)
    raise ValueError(f"unknown component {name!r}; expected one of {', '.join(COMPONENTS)}")


def count_parameters(module: nn.Module) -> int:
    """All parameters, trainable or not (what the validation summary prints)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "COMPONENTS", "Compressor", "Discriminator", "Expander", "FlowProcessor", "TextEncoder", "build_component",
    "cfg_drop_mask", "count_parameters", "sample_flow", "sample_latent", "sigma_schedule", "tokenize",
]
