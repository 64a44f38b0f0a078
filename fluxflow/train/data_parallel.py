"""DistributedDataParallel for flow steps under torchrun: gradients are all-reduced during the backward.

Flow steps have no double backward, so the trained flow components (flow_processor, and the byte text encoder of a
`train_diff_full` step) are wrapped in DDP: its bucketed all-reduce overlaps with the rest of the backward, and on
micro-batches that do not end a gradient-accumulation window `no_sync()` leaves it out (one all-reduce per
window). Their optimizer groups are then already averaged: `optimizer_step` only agrees on skipping a non-finite
update (fluxflow/train/optim.py). VAE and GAN steps keep the explicit all-reduce after the backward
(fluxflow/runtime/distributed.py): they toggle the discriminator's requires_grad and run R1's double backward, which
DDP's reducer does not support.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from fluxflow.config.modes import OPTIMIZER_GROUPS, has_flow_mode, touches_vae
from fluxflow.runtime import distributed


def wrap_for_data_parallel(models: dict[str, nn.Module], step, trained: set[str],
                           device: torch.device) -> dict[str, nn.Module]:
    """DDP wrappers of this step's trained components, keyed by name; {} unless a flow step runs under torchrun."""
    if not (distributed.active() and has_flow_mode(step) and not touches_vae(step)):
        return {}
    ids = [device.index] if device.type == "cuda" else None
    for name in trained:  # parameters no forward uses (model.text_pooled false) get no gradient: DDP, which waits
        # for every parameter that requires one, leaves them out (they are rebuilt with requires_grad for each step)
        for unused in getattr(models[name], "unused_parameter_names", list)():
            models[name].get_parameter(unused).requires_grad_(False)
    return {name: DistributedDataParallel(models[name], device_ids=ids) for name in sorted(trained)}


def synced_groups(runnable: dict[str, nn.Module]) -> frozenset[str]:
    """Optimizer groups whose every present component is DDP-wrapped: DDP has averaged their gradients."""
    wrapped = {name for name, m in runnable.items() if isinstance(m, DistributedDataParallel)}
    present = {group: set(members) & set(runnable) for group, members in OPTIMIZER_GROUPS.items()}
    return frozenset(group for group, names in present.items() if names and names <= wrapped)


@contextlib.contextmanager
def gradient_sync(runnable: dict[str, nn.Module], sync: bool):
    """Inside, DDP modules all-reduce their gradients only if `sync` (the micro-batch ends its window). Forward and
    backward must both run inside (DDP decides at the forward)."""
    with contextlib.ExitStack() as stack:
        if not sync:
            for module in runnable.values():
                if isinstance(module, DistributedDataParallel):
                    stack.enter_context(module.no_sync())
        yield
