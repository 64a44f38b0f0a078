"""The latent cache: the frozen compressor's posterior (mean, log-variance) of every training item, computed once.

A flow step whose compressor does not train (fluxflow/config/caching.py) reads the cached means instead of encoding
its images every batch, and normalises them per batch exactly as encoding on the fly does
(fluxflow/train/latents.py: normalise_latents), so its losses are the same (tests/test_latent_cache.py). Row i
is item i of the training split with its caption, so the batch sampler, resume positions and captions are unchanged.

Storage per image (store.py): the mean in float32 and the log-variance in float16. The mean is what the flow model
trains on; float32 keeps it bit-identical to encoding on the fly, at 4 bytes a value. The log-variance is kept for a
posterior-sampling rule (no step samples from it yet); float16 halves it. Bytes per image, with c latent channels
on an (S/f)² grid: 6·c·(S/f)² — 1.5 KiB at 32 px, f4, c4 (the quickstart); 24 KiB at 256 px, f8, c4; 96 KiB at
256 px, f4, c4.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from fluxflow.cache.store import CacheStore, fill
from fluxflow.data import sequential_loader

FIELD_DTYPES = {"mean": "float32", "logvar": "float16"}
CACHE_VERSION = 1

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]  # images -> (mean, logvar)


def latent_store(directory: Path, key_inputs: dict, rows: int, latent_shape: tuple[int, ...]) -> CacheStore:
    fields = {name: [list(latent_shape), dtype] for name, dtype in FIELD_DTYPES.items()}
    return CacheStore(directory, {"version": CACHE_VERSION, "kind": "latents", "key_inputs": key_inputs,
                                  "rows": rows, "fields": fields})


def build_latent_cache(store: CacheStore, dataset, encode: Encode, device: torch.device, *, batch_size: int,
                       workers: int, chunk_rows: int, desc: str) -> None:
    """Fill `store` with the posterior of every item of `dataset`, from where an earlier build stopped. Holds the
    store's lock: a second builder of the same cache waits, then finds it complete."""
    with store.lock():
        store.prepare()
        if store.complete:
            return
        loader = sequential_loader(dataset, batch_size, workers, start=store.rows_done)

        def batches():
            for images, captions in loader:
                mean, logvar = encode(images.to(device, non_blocking=True))
                yield {"mean": mean, "logvar": logvar}, captions

        fill(store, batches(), chunk_rows=chunk_rows, desc=desc)


class LatentCacheDataset(torch.utils.data.Dataset):
    """Item i: (posterior mean [c, h, w] float32, caption) of training item i, read from the memory-mapped cache."""

    def __init__(self, store: CacheStore):
        if not store.complete:
            raise ValueError(f"latent cache {store.dir} is incomplete ({store.rows_done}/{store.rows} rows)")
        self.store = store
        self._captions = store.captions()

    def __len__(self) -> int:
        return self.store.rows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self.store.read("mean", index), self._captions[index]

    def caption(self, index: int) -> str:
        return self._captions[index]

    def logvar(self, index: int) -> torch.Tensor:
        return self.store.read("logvar", index)
