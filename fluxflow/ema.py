"""Exponential moving average of a module's weights, kept on the raw (uncompiled) module.

shadow ← decay·shadow + (1 − decay)·live, for every floating-point parameter, in one `_foreach_lerp_` call;
buffers (e.g. norm statistics) and non-float tensors are copied. The shadow is what samples and exports use.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


def unwrap(module: nn.Module) -> nn.Module:
    """The module under `torch.compile(...)` (its `_orig_mod`), so state-dict keys carry no `_orig_mod.` prefix."""
    return getattr(module, "_orig_mod", module)


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.shadow = copy.deepcopy(unwrap(module)).eval().requires_grad_(False)
        for p in self.shadow.parameters():
            p.grad = None

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        live = dict(unwrap(module).named_parameters())
        ema_f, live_f = [], []
        for name, p in self.shadow.named_parameters():
            src = live[name]
            if p.is_floating_point():
                ema_f.append(p)
                live_f.append(src.detach().to(p.dtype))
            else:
                p.copy_(src)
        if ema_f:
            torch._foreach_lerp_(ema_f, live_f, 1.0 - self.decay)
        live_buffers = dict(unwrap(module).named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(live_buffers[name])

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        """Overwrite `module`'s parameters and buffers with the averaged ones (e.g. before export)."""
        unwrap(module).load_state_dict(self.shadow.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and a float: loadable with `torch.load(weights_only=True)`."""
        return {"decay": self.decay, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.shadow.load_state_dict(state["shadow"])
