"""The text cache: the frozen text encoder's outputs (tokens, pooled, mask) for every distinct training caption.

A flow step whose text encoder does not train (train_diff; fluxflow/config/caching.py) looks its captions up here
instead of running the encoder every batch. Classifier-free-guidance dropout replaces rows by the flow model's
learned null text after the encoder, so cached outputs train the same; so are the rows of blank captions, whose
outputs the cache holds too (the Trainer marks them from the batch's captions, not from the features).

Storage: tokens and pooled in float32 when the step trains in float32 (bit-identical), in bfloat16 when it trains
under bf16 autocast: the flow model feeds both only into linear layers (text_proj, pooled_proj, and a row-wise swap
for the null text, fluxflow/models/flow_processor.py), which autocast runs in bfloat16 anyway, so nothing is lost
and the cache is half the size. The mask is stored as bool.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from fluxflow.cache.store import CacheStore, fill
from fluxflow.runtime.device import host_to_device

CACHE_VERSION = 1

Encode = Callable[[list[str]], dict[str, torch.Tensor]]  # captions -> {"tokens", "pooled", "mask"}


def text_store(directory: Path, key_inputs: dict, rows: int, probe: dict[str, torch.Tensor],
               amp_dtype: torch.dtype | None) -> CacheStore:
    """`probe`: the encoder's outputs for one caption (their shapes size the fields)."""
    features = "bfloat16" if amp_dtype == torch.bfloat16 else "float32"
    dtypes = {"tokens": features, "pooled": features, "mask": "bool"}
    fields = {name: [list(probe[name].shape[1:]), dtype] for name, dtype in dtypes.items()}
    return CacheStore(directory, {"version": CACHE_VERSION, "kind": "text", "key_inputs": key_inputs, "rows": rows,
                                  "fields": fields})


def build_text_cache(store: CacheStore, captions: list[str], encode: Encode, *, batch_size: int, chunk_rows: int,
                     desc: str) -> int:
    """Fill `store` with the encoder's outputs for `captions` (distinct, in a fixed order: row i is captions[i]),
    from where an earlier build stopped; returns how many rows it computed."""
    def batches(missing: np.ndarray):
        for i in range(0, missing.size, batch_size):
            rows = missing[i:i + batch_size]
            chunk = [captions[r] for r in rows]
            with torch.no_grad():
                yield rows, encode(chunk), chunk

    return fill(store, None, batches, chunk_rows=chunk_rows, desc=desc)


class TextCache:
    """`features(captions, device)`: the cached (tokens [B, L, D], pooled [B, D], mask [B, L]) of a batch."""

    def __init__(self, store: CacheStore):
        missing = store.missing().size
        if missing:
            raise ValueError(f"text cache {store.dir} is incomplete ({missing} of {store.rows} rows missing)")
        self.store = store
        self.row = {caption: row for row, caption in store.captions().items()}

    def features(self, captions: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        try:
            rows = np.array([self.row[c] for c in captions])
        except KeyError as missing:
            raise KeyError(f"caption {missing} is not in the text cache {self.store.dir}") from None
        # pinned on the way to a GPU: from the memory map's pageable copy, the host waited for the GPU's queue
        return tuple(host_to_device(self.store.read(name, rows), device)  # type: ignore[return-value]
                     for name in ("tokens", "pooled", "mask"))
