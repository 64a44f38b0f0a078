"""Optimizers from a step's `optimization` block, one per component group, and the optimizer step itself.

Groups: `vae` (compressor + expander), `discriminator`, `flow` (flow_processor), `text_encoder`. A group whose
components are trained but which the step gives no optimizer for gets AdamW at the step's lr (a GAN step without a
discriminator optimizer still trains D). Each optimizer has two parameter groups: weights that decay and those that
do not (fluxflow/train/param_groups.py). Learning-rate schedules: fluxflow/train/lr_schedule.py.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fluxflow.config.modes import OPTIMIZER_GROUPS as GROUP_COMPONENTS
from fluxflow.config.optim import OPTIMIZER_PARAMS, given_options
from fluxflow.runtime import distributed
from fluxflow.train.param_groups import param_groups, split_decay

# Adam/AdamW/SGD have fused kernels on CPU and CUDA; they can skip a non-finite update on the device
# (`found_inf`), with no host sync. RMSprop, Adagrad and Adadelta fall back to a synchronising check.
_FUSED = {"AdamW", "Adam", "SGD"}


def make_optimizer(cfg: Any, params: list[nn.Parameter] | list[dict[str, Any]],
                   default_lr: float) -> torch.optim.Optimizer:
    """`params`: parameters, or parameter groups (a group's own `weight_decay` wins over the config's). What `cfg`
    leaves out takes the defaults of fluxflow/config/optim.py (OPTIMIZER_PARAMS), not torch's."""
    given = given_options(cfg)
    kind = given.pop("type", "AdamW")
    lr = float(given.pop("lr", None) or default_lr)
    opts = {**OPTIMIZER_PARAMS[kind], **given}
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in opts.items()}
    if kind in _FUSED:
        kwargs.setdefault("fused", True)
    return getattr(torch.optim, kind)(params, lr=lr, **kwargs)


def build_optimizers(step: Any, models: dict[str, nn.Module], trained: set[str]) -> dict[str, torch.optim.Optimizer]:
    """The optimizers of the step's groups that have trainable components, keyed by group."""
    groups = {group: param_groups(*split_decay(models[name] for name in comps if name in models))
              for group, comps in GROUP_COMPONENTS.items() if trained.intersection(comps)}
    return {group: make_optimizer(step.optimization.optimizers.get(group), params, step.lr)
            for group, params in groups.items() if params}


def optimizer_step(optimizers: Sequence[torch.optim.Optimizer], finite: torch.Tensor, max_norm: float | None = None,
                   grads_averaged: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
    """One update of `optimizers` (the groups one loss trains: train_diff_full's flow and text encoder together):
    clip all their gradients by one global norm and apply the update, or skip it for all of them when the loss
    (`finite`) or any gradient is not finite.

    Returns (each optimizer's gradient norm before clipping, 1.0 if the update was skipped else 0.0), 0-dim device
    tensors. The clip factor min(1, max_norm / global norm) is applied as a tensor (no host sync; 0/None: no
    clipping). Fused optimizers skip on the device (`found_inf`, no sync); the others need one host sync. Under
    torchrun the gradients are averaged over ranks first (unless DDP did during the backward: `grads_averaged`, true
    for all or none of one update's groups), so every rank clips the same gradient and agrees on skipping."""
    if distributed.active():
        for optimizer in optimizers:
            finite = (distributed.agree_finite(finite) if grads_averaged
                      else distributed.average_gradients(optimizer, finite))
    params = [[p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
              for optimizer in optimizers]
    norms = [torch.nn.utils.get_total_norm([p.grad for p in group], foreach=True) for group in params]
    total = torch.linalg.vector_norm(torch.stack(norms)) if len(norms) > 1 else norms[0]
    if max_norm:
        torch.nn.utils.clip_grads_with_norm_([p for group in params for p in group], max_norm, total, foreach=True)
    finite = finite & torch.isfinite(total).to(finite.device)
    skipped = (~finite).to(torch.float32)
    for optimizer in optimizers:
        if optimizer.defaults.get("fused") and not _uninitialised_on_skip(optimizer):
            optimizer.found_inf = skipped
            optimizer.step()
        elif bool(finite):  # host sync: only for optimizers without a fused kernel (or before their first update)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [norm.detach() for norm in norms], skipped


def _uninitialised_on_skip(optimizer: torch.optim.Optimizer) -> bool:
    """Whether a device-side skip (`found_inf`) of this fused optimizer's next step would leave state the step after
    uses: fused SGD with momentum allocates its momentum buffers with `empty_like` on its first step and only fills
    them when the step runs, so a skipped first update left garbage (measured: NaN weights at the next finite
    update). Its first update is checked on the host instead (one sync, once per step; a resume has its buffers)."""
    return isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] != 0 and not optimizer.state
