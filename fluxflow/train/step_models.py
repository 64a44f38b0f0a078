"""The models of one pipeline step: built or loaded, placed, frozen or trained as the step declares, with EMA.

Each step declares its own trained set (fluxflow.config.modes): every other component is frozen and in eval mode for
this step only, so a freeze never leaks into a later step. Components the input checkpoint carries but this step does
not use are kept and written back unchanged, so later steps still find them.
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from fluxflow.runtime import distributed
from fluxflow.train.ema import EMA
from fluxflow.models import build_component
from fluxflow.config.modes import ema_components, required_components, trained_components

log = logging.getLogger("fluxflow.train.step_run")


def prepare_models(config, step, state: dict | None, device: torch.device) -> dict[str, nn.Module]:
    saved = (state or {}).get("models", {})
    names = required_components(step) | set(saved)
    models, trained = {}, trained_components(step)
    for name in sorted(names):
        module = build_component(name, config.model, config.data.channels)
        if name in saved:
            module.load_state_dict(saved[name])
        elif state is not None and distributed.is_main():
            # A component the step trains starts fresh as a matter of course (the discriminator of the first GAN step
            # after a VAE warm-up); one it only uses, untrained, is worth a warning.
            (log.info if name in trained else log.warning)(
                "Auto-created %s with default parameters from the model config (not in the input checkpoint)%s",
                name, "" if name in trained else "; this step does not train it, so it is used untrained")
        models[name] = module.to(device).requires_grad_(name in trained).train(name in trained)
    return models


def prepare_emas(step, models: dict[str, nn.Module], state: dict | None, trained: set[str],
                 resuming: bool) -> dict[str, EMA]:
    """EMAs of this step's components (`ema_components`, the ones the step updates) plus those the input checkpoint
    carries for other components, carried unchanged so that samples and exports of later steps still decode with EMA
    weights."""
    saved = (state or {}).get("ema", {})
    emas = {}
    for name in sorted((ema_components(step, trained) | set(saved)) & set(models)):
        ema = EMA(models[name], decay=step.ema_decay)
        if name in saved:
            ema.load_state_dict(saved[name])
            if not resuming:  # a parent's EMA continues at this step's decay; only a resume keeps the saved one
                ema.decay = float(step.ema_decay)
        emas[name] = ema
    return emas


def sampling_models(models: dict[str, nn.Module], emas: dict[str, EMA]) -> dict[str, nn.Module]:
    """Models for samples, evaluation and exports: the EMA weights where an EMA exists, else the raw module."""
    return {name: (emas[name].shadow if name in emas else module) for name, module in models.items()}
