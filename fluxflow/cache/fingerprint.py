"""Content hashes that key the caches: the weights a frozen network actually has, and the items a dataset yields.

A cache directory is named by a hash of everything its rows depend on (fluxflow/train/step_cache.py builds the key),
so a changed VAE, text encoder or dataset gets a new directory and a stale cache is never read.
"""
from __future__ import annotations

import hashlib

import torch
from torch import nn


def module_sha256(module: nn.Module) -> str:
    """sha256 over the module's state dict: every tensor's name, dtype, shape and bytes, in name order.

    torch's own `nn.Module.state_dict`, not the module's override: the pretrained text encoder leaves its weights
    out of checkpoints (its `state_dict` is empty), but a cache of its outputs depends on them all the same."""
    digest = hashlib.sha256()
    for name, tensor in sorted(nn.Module.state_dict(module).items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def dataset_fingerprint(dataset) -> dict:
    """What the dataset's config does not pin down: its length, the first and last items as loaded (so a change of
    the decoding, resizing or rendering code shows), and the dataset's own `fingerprint()` where it has one (a
    folder: its files' names, captions, sizes and modification times)."""
    digest = hashlib.sha256()
    n = len(dataset)
    for i in sorted({0, n - 1}) if n else ():
        image, caption = dataset[i]
        digest.update(image.contiguous().numpy().tobytes())
        digest.update(caption.encode("utf-8"))
    own = dataset.fingerprint() if hasattr(dataset, "fingerprint") else None
    return {"items": n, "probe": digest.hexdigest(), "files": own}
