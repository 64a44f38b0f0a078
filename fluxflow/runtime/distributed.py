"""Data-parallel training of one step under `torchrun` (gloo on CPU, nccl on CUDA).

The few distributed lines live here (torchtitan style): rank and world from the environment torchrun sets, one
process group, gradients averaged across ranks before every optimizer step, and the helpers the step runner uses so that
only rank 0 writes checkpoints, samples and tracking records.

VAE and GAN steps average gradients with an explicit all-reduce after the backward rather than through
`DistributedDataParallel`: the GAN step switches the discriminator's `requires_grad` between its G and D passes and
runs R1's double backward, which DDP's reducer does not support. Averaging `.grad` once per optimizer step is the
same algorithm (synchronous data parallelism), one flat all-reduce per optimizer, without overlap. Flow steps use DDP
(fluxflow/train/data_parallel.py), which overlaps the all-reduce with the backward.
"""
from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


# How long a rank waits in a collective for the others. Rank 0 alone evaluates, draws samples and writes (and uploads)
# checkpoints while the other ranks wait at their next collective: NCCL's default of 10 minutes would kill a real-size
# step whose first evaluation (it fits the feature network) or checkpoint upload takes longer. Ray Train's group gets
# the same (fluxflow/runtime/ray_train_launch.py).
RANK_WAIT = timedelta(hours=1)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def active() -> bool:
    return world_size() > 1


def init_from_env(device: torch.device) -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); returns whether this run is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return active()
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=RANK_WAIT)
    return True


def local_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and active():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def average_gradients(optimizer: torch.optim.Optimizer, finite: torch.Tensor) -> torch.Tensor:
    """Average this optimizer's gradients over ranks; the update is skipped everywhere if any rank saw a
    non-finite loss (returns the agreed `finite`)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    if grads:
        flat = _flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat.div_(world_size())
        for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
            grad.copy_(synced)
    return agree_finite(finite)


def agree_finite(finite: torch.Tensor) -> torch.Tensor:
    """True on every rank only if it is True on all of them (a 0-dim all-reduce, no host sync)."""
    agreed = finite.to(torch.int32).clone()
    dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
    return agreed.bool()


def broadcast_modules(modules) -> None:
    """Start every rank from rank 0's weights (fresh components are initialised randomly per rank)."""
    for module in modules:
        for tensor in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(tensor.data, src=0)


def mean_across_ranks(values: torch.Tensor) -> torch.Tensor:
    if active():
        values = values.clone()
        dist.all_reduce(values)
        values.div_(world_size())
    return values


def assert_in_sync(modules) -> float:
    """Raises if any rank's weights differ from rank 0's; returns the checksum, a float64 sum over every parameter.
    The sum is gathered on the parameters' device: NCCL (the backend on CUDA) has no CPU tensors."""
    params = [p for module in modules for p in module.parameters()]
    local = torch.zeros((), dtype=torch.float64, device=params[0].device if params else None)
    for p in params:
        local += p.detach().double().sum()
    gathered = [torch.zeros_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    if any(not torch.equal(g, gathered[0]) for g in gathered):
        raise RuntimeError(f"ranks diverged: parameter checksums {[float(g) for g in gathered]}")
    return float(local)


def broadcast_object(obj):
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
