"""Optimizers and schedulers from a step's `optimization` block, one per component group.

Groups: `vae` (compressor + expander), `discriminator`, `flow` (flow_processor), `text_encoder`. A group whose
components are trained but which the step gives no optimizer for gets AdamW at the step's lr (a GAN step without a
discriminator optimizer still trains D). A group without a scheduler trains at constant lr.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fluxflow.runtime import distributed

from fluxflow.config.modes import OPTIMIZER_GROUPS as GROUP_COMPONENTS

# Adam/AdamW/SGD have fused kernels on CPU and CUDA; they can skip a non-finite update on the device
# (`found_inf`), with no host sync. RMSprop (and Lion) fall back to a synchronising check.
_FUSED = {"AdamW", "Adam", "SGD"}


def _field(cfg: Any, name: str, default=None):
    if cfg is None:
        return default
    if isinstance(cfg, dict):
        return cfg.get(name, default)
    return getattr(cfg, name, default)


def _options(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, dict):
        return dict(cfg)
    return cfg.model_dump(exclude_none=True)


def make_optimizer(cfg: Any, params: list[nn.Parameter], default_lr: float) -> torch.optim.Optimizer:
    opts = _options(cfg)
    kind = opts.pop("type", "AdamW")
    lr = float(opts.pop("lr", None) or default_lr)
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items()}
    if kind in _FUSED:
        kwargs.setdefault("fused", True)
    if kind == "Lion":
        raise ValueError("optimizer type Lion needs the optional 'lion-pytorch' package, which is not installed")
    return getattr(torch.optim, kind)(params, lr=lr, **kwargs)


def make_scheduler(cfg: Any, optimizer: torch.optim.Optimizer, total_epochs: int):
    """Schedulers step once per epoch (StepLR's `step_size` counts epochs); cosine spans the step's epochs."""
    opts = _options(cfg)
    if not opts:
        return None
    kind = opts.pop("type")
    lr = optimizer.param_groups[0]["lr"]
    if kind == "CosineAnnealingLR":
        eta_min = lr * float(opts.pop("eta_min_factor", 0.0)) if "eta_min" not in opts else float(opts.pop("eta_min"))
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=int(opts.pop("T_max", max(total_epochs, 1))), eta_min=eta_min)
    opts.pop("eta_min_factor", None)
    return getattr(torch.optim.lr_scheduler, kind)(optimizer, **opts)


def trainable_params(models: dict[str, nn.Module], group: str) -> list[nn.Parameter]:
    return [p for name in GROUP_COMPONENTS[group] if name in models
            for p in models[name].parameters() if p.requires_grad]


def build_optimizers(step: Any, models: dict[str, nn.Module], trained: set[str]):
    """Returns (optimizers, schedulers) keyed by group, for the groups that have trainable components."""
    configured = _field(step.optimization, "optimizers", {}) or {}
    sched_cfg = _field(step.optimization, "schedulers", {}) or {}
    optimizers: dict[str, torch.optim.Optimizer] = {}
    for group, comps in GROUP_COMPONENTS.items():
        if not trained.intersection(comps):
            continue
        params = trainable_params(models, group)
        if params:
            optimizers[group] = make_optimizer(configured.get(group), params, step.lr)
    return optimizers, sched_cfg


def build_schedulers(sched_cfg: dict, optimizers: dict[str, torch.optim.Optimizer], total_epochs: int):
    schedulers = {}
    for group, opt in optimizers.items():
        sched = make_scheduler(sched_cfg.get(group), opt, total_epochs)
        if sched is not None:
            schedulers[group] = sched
    return schedulers


def optimizer_step(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> None:
    """Apply the update only when the loss was finite. Fused optimizers skip on the device (no sync).

    Under torchrun the gradients are averaged over ranks first, and all ranks agree on skipping."""
    if distributed.active():
        finite = distributed.average_gradients(optimizer, finite)
    if optimizer.defaults.get("fused"):
        optimizer.found_inf = (~finite).to(torch.float32)
        optimizer.step()
    elif bool(finite):  # host sync: only for optimizers without a fused kernel (RMSprop)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def scheduler_step(scheduler, metric: float | None = None) -> None:
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        if metric is not None:
            scheduler.step(metric)
    else:
        scheduler.step()
