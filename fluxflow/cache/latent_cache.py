"""The latent cache: the frozen compressor's posterior (mean, log-variance) of every training item, computed once.

A flow step whose compressor does not train (fluxflow/config/caching.py) reads the cached means instead of encoding
its images every batch, and normalises them per batch exactly as encoding on the fly does
(fluxflow/models/latents.py: normalise_latents), so its losses are the same (tests/cache/test_latent_cache.py). Row i
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

import numpy as np
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


def build_latent_cache(store: CacheStore, dataset, rows: np.ndarray | None, encode: Encode, device: torch.device, *,
                       batch_size: int, workers: int, chunk_rows: int, desc: str) -> int:
    """Fill the rows of `store` that `rows` (None: all) names and that hold nothing yet with the posterior of those
    items of `dataset` (`fill`: under the store's lock); returns how many it computed. The items met unreadable
    (`dataset.unreadable()`, a folder's) are recorded with the rows: a step that reuses them counts them
    (`mark_unreadable`)."""
    recorded: set[int] = set()

    def batches(missing: np.ndarray):
        start = 0
        for images, captions in sequential_loader(dataset, batch_size, workers, missing.tolist()):
            mean, logvar = encode(images.to(device, non_blocking=True))
            # Recorded before the batch's rows are handed on to be committed: recorded at the build's end, a build
            # stopped at a commit (or killed) kept rows whose unreadable items no later step counted
            found = dataset.unreadable(recorded) if hasattr(dataset, "unreadable") else {}
            if found:
                store.record_unreadable(found)
                recorded.update(found)
            yield missing[start:start + len(captions)], {"mean": mean, "logvar": logvar}, captions
            start += len(captions)

    return fill(store, rows, batches, chunk_rows=chunk_rows, desc=desc)


def mark_unreadable(store: CacheStore, dataset) -> None:
    """Mark in `dataset.skips` the items the cache recorded unreadable: a step that reads its rows instead of the
    images says the first and counts those its batches stood in for, as the step that computed them did."""
    skips = getattr(dataset, "skips", None)
    for item, reason in store.unreadable().items() if skips is not None else ():
        if item < len(dataset):
            skips.mark(item, reason)


class LatentCacheDataset(torch.utils.data.Dataset):
    """Item i: (posterior mean [c, h, w] float32, caption) of training item i, read from the memory-mapped cache.
    Only the rows filled when it was opened can be read (the step's own: fluxflow/train/step_cache.py). `skips`: the
    training split's counter, whose marks (`mark_unreadable`) say which rows hold a stand-in's values: the loader
    counts them per batch trained, as it does on the images."""

    def __init__(self, store: CacheStore, skips=None):
        self.store, self.skips = store, skips
        self._filled = store.filled()
        self._captions = store.captions()

    def __len__(self) -> int:
        return self.store.rows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        if not self._filled[index]:
            raise IndexError(f"row {index} of the latent cache {self.store.dir} was not computed: this step's rows "
                             "were planned for other epochs or batches")
        return self.store.read("mean", index), self._captions[index]
