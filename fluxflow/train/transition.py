"""Transition criteria: when a pipeline step is finished, and with which outcome.

`epoch`: after `n_epochs` → outcome `epochs_done`.
`loss_threshold`: at the end of each epoch the smoothed metric — the mean of the metric over the last `window`
batches (default 20) — is compared with the threshold; below it → `met`. Reaching `max_epochs` without that →
`max_epochs_reached` (with a warning). The last `window` values live in a ring buffer on the device, so watching the
metric costs no host sync per batch; it is read once per epoch.
"""
from __future__ import annotations

import torch

from fluxflow.runtime import distributed


class TransitionMonitor:
    def __init__(self, transition, n_epochs: int, device: torch.device):
        self.mode = transition.mode
        self.metric = transition.metric
        self.threshold = transition.threshold
        self.window = int(getattr(transition, "window", 20) or 20)
        self.max_epochs = int(transition.max_epochs or n_epochs) if self.mode == "loss_threshold" else n_epochs
        self.values = torch.full((self.window,), float("nan"), device=device)
        self.seen = 0  # batches observed (a python counter, not a tensor)

    def observe(self, metrics: dict[str, torch.Tensor]) -> None:
        if self.mode == "loss_threshold" and self.metric in metrics:
            self.values[self.seen % self.window] = metrics[self.metric].detach().float()
            self.seen += 1

    def smoothed(self) -> float | None:
        if self.mode != "loss_threshold" or self.seen == 0:
            return None
        # One sync per epoch; under torchrun the ranks average their windows so they all take the same decision.
        return float(distributed.mean_across_ranks(self.values[: min(self.seen, self.window)].mean()))

    def outcome_after_epoch(self, epochs_done: int, smoothed: float | None) -> str | None:
        """None while the step should go on, else its outcome. `smoothed`: this epoch's `smoothed()`, which the
        caller has taken already (a host sync, and under torchrun an all-reduce: once per epoch)."""
        if smoothed is not None and smoothed < self.threshold:
            return "met"
        if epochs_done < self.max_epochs:
            return None
        return "max_epochs_reached" if self.mode == "loss_threshold" else "epochs_done"

    def state_dict(self) -> dict:
        return {"values": self.values.cpu(), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.values.copy_(state["values"].to(self.values.device))
        self.seen = int(state["seen"])
