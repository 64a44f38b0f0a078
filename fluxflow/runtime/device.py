"""Device and precision: CUDA with bf16 autocast when present, else CPU in fp32."""
from __future__ import annotations

import contextlib

import torch

from fluxflow.errors import NonRetryable


class DeviceUnavailable(NonRetryable, RuntimeError):
    """The configured device is not on this machine: a problem of the run's settings, not of training. Not retryable:
    a retry of the step runs on the same machine (a deployment run's `device=cuda` on a worker without a GPU)."""


def resolve_device(requested: str | None, setting: str = "training.device") -> torch.device:
    """`auto`/None picks CUDA when available; an explicit `cuda` without a GPU is a clear error. `setting`: what the
    user set the device with, as the error names it (fluxflow-generate has --device, no training.device)."""
    if requested in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:  # torch's own words list every device type it knows of
        raise DeviceUnavailable(f"{setting} is {requested!r}, not a device (use 'auto', 'cpu' or 'cuda')") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(f"{setting} is {requested!r} but no CUDA device is available (use 'auto' or 'cpu')")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceUnavailable(f"{setting} is 'mps' but no Apple GPU is available (use 'auto' or 'cpu')")
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 on CUDA by default (no GradScaler needed) where the GPU computes in bf16 (compute capability 8.0+: A100,
    H100, RTX 30xx on); older GPUs (V100, T4) only emulate bf16, slower than fp32, so `auto` is fp32 there. fp32 on
    CPU unless bf16 is asked for explicitly; an explicit `bf16` is kept anywhere."""
    if precision == "bf16":
        return torch.bfloat16
    native = device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)
    return torch.bfloat16 if precision == "auto" and native else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def host_to_device(tensor: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """`tensor` (made on the host) on `device`. To CUDA it is pinned and copied without blocking: a copy from pageable
    memory makes the host wait until every kernel queued before it has run (the last batch's backward, optimizer and
    EMA), so the training loop could never run ahead of the GPU; each flow step's tokenized captions did that every
    batch. Pinned blocks are not reused before their copy completes (torch's caching host allocator)."""
    if device is None or torch.device(device).type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)
