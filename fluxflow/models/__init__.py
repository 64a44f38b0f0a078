"""The five trainable components, built by name from the `model:` config section."""
from __future__ import annotations

from typing import Any

from torch import nn

from fluxflow.config.model_sizes import component_args
from fluxflow.config.modes import COMPONENTS
from fluxflow.config.file_checks import pretrained_text_path
from fluxflow.models.compressor import Compressor, sample_latent
from fluxflow.models.discriminator import Discriminator
from fluxflow.models.expander import Expander
from fluxflow.models.flow_processor import FlowProcessor, blank_caption_mask, cfg_drop_mask
from fluxflow.models.flow_sampler import sample_flow, sigma_schedule
from fluxflow.models.pretrained_text import PretrainedTextEncoder
from fluxflow.models.text_encoder import TextEncoder, tokenize

CLASSES: dict[str, type[nn.Module]] = {"compressor": Compressor, "expander": Expander, "flow_processor": FlowProcessor,
                                      "text_encoder": TextEncoder, "discriminator": Discriminator}


def build_component(name: str, model_cfg: Any, channels: int) -> nn.Module:
    """Build component `name` sized from `model_cfg` (any object with the ModelConfig attributes). The text encoder
    is the pretrained one of `model.text_encoder` when it names one (loaded from its directory, frozen)."""
    args = component_args(name, model_cfg, channels)  # an unknown name is refused here, with the known ones
    if name == "text_encoder" and pretrained_text_path(model_cfg):
        return PretrainedTextEncoder(*args)
    return CLASSES[name](*args)


def count_parameters(module: nn.Module) -> int:
    """All parameters, trainable or not (what the validation summary prints)."""
    return sum(p.numel() for p in module.parameters())


__all__ = [
    "COMPONENTS", "Compressor", "Discriminator", "Expander", "FlowProcessor", "PretrainedTextEncoder", "TextEncoder",
    "blank_caption_mask", "build_component",
    "cfg_drop_mask", "count_parameters", "sample_flow", "sample_latent", "sigma_schedule", "tokenize",
]
