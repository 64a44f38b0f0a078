"""Every RNG a training step draws from, saved in a checkpoint and put back on resume (that is what makes a resume
bit-identical to an uninterrupted run)."""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from fluxflow.runtime.global_rng import GLOBAL_RNG


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step draws from, as tensors and plain values that `torch.load(weights_only=True)` reads:
    torch CPU (uint8 tensor), each CUDA device when CUDA is available, Python `random` and numpy's global RNG (their
    Mersenne-Twister words as int64 tensors, which is what lets weights_only accept them)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    version, words, gauss_next = random.getstate()
    state["python"] = {
        "version": int(version),
        "state": torch.tensor(words, dtype=torch.int64),
        "gauss_next": None if gauss_next is None else float(gauss_next),
    }
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = {
        "name": str(name),
        "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64).copy()),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what `capture_rng_state` captured. Parts absent from `state` are left as they are; CUDA states are
    restored for as many devices as both the checkpoint and this machine have.

    Under GLOBAL_RNG: a retried step resuming beside a branch between its seeding and its draws would otherwise give
    that branch other initial weights (fluxflow/runtime/global_rng.py)."""
    with GLOBAL_RNG:
        if "torch" in state:
            torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
        if state.get("cuda") and torch.cuda.is_available():
            for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(cuda_state.cpu().to(torch.uint8), device)
        if "python" in state:
            py = state["python"]
            random.setstate((int(py["version"]), tuple(int(w) for w in py["state"].tolist()), py["gauss_next"]))
        if "numpy" in state:
            npy = state["numpy"]
            keys = npy["keys"].cpu().numpy().astype(np.uint32)
            np.random.set_state((npy["name"], keys, int(npy["pos"]), int(npy["has_gauss"]),
                                 float(npy["cached_gaussian"])))
