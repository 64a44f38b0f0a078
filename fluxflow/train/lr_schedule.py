"""Learning-rate schedules of one pipeline step: a linear warm-up, then a `torch.optim.lr_scheduler`.

One `LrSchedule` per optimizer group that has a scheduler (`optimization.schedulers.<group>`, fluxflow/config/optim.py).
The step runner calls `after_optimizer_step()` after each optimizer step (a skipped non-finite update counts too, so the
schedule never needs the host to know) and `after_epoch(metric)` at every epoch end; the one the schedule's
`interval` does not use does nothing. `state_dict()` / `load_state_dict()` resume the exact lr sequence.

Warm-up: the n-th optimizer step of the step (n = 1..warmup_steps) trains at n / warmup_steps x the start lr (the lr
the scheduler starts from). The scheduler does not step before the warm-up is over: with interval `step` it takes
over at update warmup_steps + 1, with interval `epoch` at the first epoch end after the warm-up.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, ReduceLROnPlateau

from fluxflow.config.optim import EPOCH_ONLY, SCHEDULE_PARAMS, SCHEDULER_PARAMS, given_options
from fluxflow.wording import counted


class LrSchedule:
    """The lr of one optimizer: `warmup_steps` of linear warm-up, then `scheduler` every `interval`."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: LRScheduler | ReduceLROnPlateau,
                 warmup_steps: int, interval: str, inert: str | None = None):
        self.scheduler, self.interval = scheduler, interval
        self.warmup_steps, self.optimizer_steps = warmup_steps, 0
        self.inert = inert  # why part of it never acts in this step, where that is so (make_schedule)
        # Built after the scheduler, which has set the start lr: the warm-up ramps to that lr.
        self.warmup = _linear_warmup(optimizer, warmup_steps) if warmup_steps > 1 else None

    @property
    def warming_up(self) -> bool:
        return self.optimizer_steps < self.warmup_steps

    def after_optimizer_step(self) -> None:
        self.optimizer_steps += 1
        if self.warming_up:
            self.warmup.step()
        elif self.interval == "step":
            self.scheduler.step()

    def after_epoch(self, metric: float | None = None) -> None:
        """ReduceLROnPlateau steps only with a metric (the smoothed transition metric of a loss_threshold step)."""
        if self.interval != "epoch" or self.warming_up:
            return
        if isinstance(self.scheduler, ReduceLROnPlateau):
            if metric is not None:
                self.scheduler.step(metric)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        # MultiStepLR keeps its milestones in a Counter, which a checkpoint (torch.load(weights_only=True)) cannot
        # hold: saved as a plain dict, made a Counter again on load.
        scheduler = {k: dict(v) if isinstance(v, Counter) else v for k, v in self.scheduler.state_dict().items()}
        return {"optimizer_steps": self.optimizer_steps, "scheduler": scheduler,
                "warmup": self.warmup.state_dict() if self.warmup is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer_steps = int(state["optimizer_steps"])
        mine = self.scheduler.state_dict()
        self.scheduler.load_state_dict({k: Counter(v) if isinstance(mine.get(k), Counter) else v
                                        for k, v in state["scheduler"].items()})
        if self.warmup is not None:
            self.warmup.load_state_dict(state["warmup"])


def _linear_warmup(optimizer: torch.optim.Optimizer, steps: int) -> LambdaLR:
    """LambdaLR from 1/steps to 1 x each group's current lr (the scheduler's start lr) over `steps` updates."""
    ratios = [group["lr"] / group.get("initial_lr", group["lr"]) for group in optimizer.param_groups]
    return LambdaLR(optimizer, [lambda j, r=r: r * min(1.0, (j + 1) / steps) for r in ratios])


def build_schedulers(sched_cfg: dict, optimizers: dict[str, torch.optim.Optimizer], max_epochs: int,
                     steps_per_epoch: int | None = None) -> dict[str, LrSchedule]:
    """An LrSchedule per optimizer group with a scheduler config (a resolved SchedulerConfig or a mapping).
    `steps_per_epoch`: optimizer steps per epoch (batches per epoch / gradient_accumulation_steps); None (a caller
    that only calls `after_epoch`): every schedule steps per epoch, without warm-up."""
    return {group: make_schedule(opts, optimizer, max_epochs, steps_per_epoch)
            for group, optimizer in optimizers.items() if (opts := given_options(sched_cfg.get(group)))}


def make_schedule(opts: dict[str, Any], optimizer: torch.optim.Optimizer, max_epochs: int,
                  steps_per_epoch: int | None) -> LrSchedule:
    kind = opts.get("type") or "CosineAnnealingLR"
    interval = "epoch" if kind in EPOCH_ONLY else opts.get("interval") or SCHEDULE_PARAMS["interval"]
    warmup = int(opts.get("warmup_steps") or 0)
    if steps_per_epoch is None:
        interval, warmup, steps_per_epoch = "epoch", 0, 1
    if interval == "step":
        # The scheduler's start (its step 0) is the lr of update max(warmup, 1): the warm-up's last update, which
        # trains at the start lr, or the step's first. It steps after each later update, so over the `span` updates
        # after that one the last update of the step gets the schedule's end (eta_min, end_factor), with or without
        # a warm-up (warm-up 0 and 1 are the same schedule).
        span = steps_per_epoch * max_epochs - max(warmup, 1)
    else:  # ... over the epoch ends from the first one after the warm-up
        span = max_epochs - max(1, math.ceil(warmup / steps_per_epoch)) + 1
    # scheduler steps whose lr some update of the step uses (the one after the last epoch end is never used)
    used = span if interval == "step" else span - 1
    return LrSchedule(optimizer, make_scheduler(kind, opts, optimizer, max(span, 1), interval), warmup, interval,
                      inert=inert_reason(kind, opts, warmup, steps_per_epoch * max_epochs, used, interval))


def inert_reason(kind: str, opts: dict[str, Any], warmup: int, updates: int, used: int, interval: str) -> str | None:
    """Why part of a schedule never acts within the step's `updates` optimizer updates (a warm-up longer than the
    step, a StepLR / MultiStepLR that never reaches its first drop: often an epoch count written for per-update
    stepping; or a per-update decay that leaves under VANISHED of the lr, the same mistake the other way), or None.
    The config is valid; the runner warns, since the lr silently stays where it is, or vanishes."""
    if warmup > updates:
        return (f"warmup_steps {warmup} is more than the step's {counted(updates, 'optimizer update')}: the lr never "
                f"reaches its start value (the last update trains at {updates}/{warmup} of it)")
    first = {"StepLR": opts.get("step_size"), "MultiStepLR": min(opts.get("milestones") or [0])}.get(kind)
    if first and first > used:
        what = "step_size" if kind == "StepLR" else "first milestone"
        steps = counted(used, "optimizer update" if interval == "step" else "epoch end")
        return (f"{kind}'s {what} {first} is more than the {steps} after its start that the step trains on "
                f"(interval: {interval}): the lr never changes")
    factor = end_factor(kind, opts, used)
    if interval == "step" and factor is not None and factor < VANISHED:
        # The original tool's StepLR(step_size=10) pasted into a new config: the lr halves every 10 updates.
        return (f"{kind} takes the lr to {factor:.1e} of its start by the step's last update "
                f"({counted(used, 'update')} after its start, interval: step): the step stops learning long before its "
                "end; if its numbers count epochs, set interval: epoch")
    return None


VANISHED = 1e-3  # an lr below this fraction of its start trains nothing worth its updates


def end_factor(kind: str, opts: dict[str, Any], steps: int) -> float | None:
    """The lr's factor after `steps` scheduler steps of the decays by `gamma` (StepLR, MultiStepLR, ExponentialLR);
    None for other schedules."""
    given = opts.get("gamma")
    gamma = float(given if given is not None else SCHEDULER_PARAMS.get(kind, {}).get("gamma", 1.0))
    drops = {"StepLR": steps // int(opts.get("step_size") or steps + 1),
             "MultiStepLR": sum(1 for m in opts.get("milestones") or [] if m <= steps), "ExponentialLR": steps}
    return gamma ** drops[kind] if kind in drops else None


def make_scheduler(kind: str, opts: dict[str, Any], optimizer: torch.optim.Optimizer, span: int, interval: str):
    """The torch scheduler; `span` (its steps) is CosineAnnealingLR's T_max and LinearLR's default `total_iters`.
    ConstantLR's default `total_iters` keeps its factor on every update after the start (per update: span + 1; its
    factor would end at the step's last update otherwise)."""
    given = {k: v for k, v in opts.items() if v is not None and k not in ("type", *SCHEDULE_PARAMS)}
    kwargs = {**SCHEDULER_PARAMS[kind], **given}
    if kind == "CosineAnnealingLR":
        eta_min = optimizer.param_groups[0]["lr"] * float(kwargs.pop("eta_min_factor"))
        return CosineAnnealingLR(optimizer, T_max=span, eta_min=eta_min)
    if "total_iters" in kwargs and kwargs["total_iters"] is None:
        kwargs["total_iters"] = span + 1 if kind == "ConstantLR" and interval == "step" else span
    return getattr(torch.optim.lr_scheduler, kind)(optimizer, **kwargs)
