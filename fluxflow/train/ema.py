"""Exponential moving average of a module's weights, kept on the raw module (speed.py compiles it in place).

shadow ← d·shadow + (1 − d)·live, for every parameter (the models' are all floating point), in one `_foreach_lerp_`
call; buffers (e.g. norm statistics and their integer counters) are copied. The shadow is what samples and exports use.

d warms up as min(decay, (1 + n) / (10 + n)) after n updates: with a fixed 0.999 a short stage's shadow would still
be ~85 % initial weights after 170 updates, and its samples would show noise instead of what the model learned.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class EMA:
    def __init__(self, module: nn.Module, decay: float):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow = copy.deepcopy(module).eval().requires_grad_(False)  # a Parameter's copy has no grad

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        live = dict(module.named_parameters())
        shadow = dict(self.shadow.named_parameters())
        if shadow:  # a component of buffers only has nothing to average (foreach refuses an empty list)
            torch._foreach_lerp_(list(shadow.values()), [live[name].detach().to(p.dtype) for name, p in shadow.items()],
                                 1.0 - self.current_decay())
        self.updates += 1
        live_buffers = dict(module.named_buffers())
        for name, b in self.shadow.named_buffers():
            b.copy_(live_buffers[name])

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and a float: loadable with `torch.load(weights_only=True)`."""
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.updates = int(state.get("updates", 0))
        self.shadow.load_state_dict(state["shadow"])
