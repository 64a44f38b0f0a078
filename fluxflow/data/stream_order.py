"""The sample order of a sharded stream, worked out from sample counts alone (no data is read here).

- `assign_shards`: which shards each torchrun rank reads. Fixed for the whole run (not per epoch), balanced by
  sample count, so that every rank knows how many samples it has without reading the others' shards.
- `buffer_order`: a shuffle buffer of `size` samples over a stream of n samples, run on positions only: output p is
  input `order[p]`. The classic streaming shuffle (fill the buffer, then emit a random slot and refill it with the
  next sample; drain the rest in random order), seeded, so an epoch's order is a function of its seed, and a resume
  or a worker can compute which inputs it needs before reading any.

A sample leaves the buffer at most `size` outputs before it is read, so a reader that follows this order holds at
most about `size` samples at a time (fluxflow/data/webdataset_source.py).
"""
from __future__ import annotations

import numpy as np

from fluxflow.wording import counted


def assign_shards(available: list[int], world: int) -> list[list[int]]:
    """Shard indices per rank: the largest shards first, each to the rank with the fewest samples so far (ties:
    the lower rank), each rank's list in shard order. `available[k]`: training samples of shard k."""
    if world > len(available):
        raise ValueError(f"{counted(len(available), 'shard')} cannot be split over {world} ranks: write at least one "
                         "shard per rank")
    ranks: list[list[int]] = [[] for _ in range(world)]
    totals = [0] * world
    for k in sorted(range(len(available)), key=lambda k: (-available[k], k)):
        r = min(range(world), key=lambda r: (totals[r], r))
        ranks[r].append(k)
        totals[r] += available[k]
    return [sorted(shards) for shards in ranks]


def buffer_order(n: int, size: int, seed: list[int]) -> np.ndarray:
    """`order[p]` = the input position emitted at output position p (a permutation of 0..n-1)."""
    rng = np.random.default_rng(seed)
    size = max(0, min(size, n))
    if size <= 1:
        return np.arange(n, dtype=np.int64)
    order = np.empty(n, dtype=np.int64)
    buffer = list(range(size))
    slots = rng.integers(0, size, n - size).tolist()
    for i, slot in enumerate(slots):  # input size + i arrives: a random slot leaves, the new sample takes it
        order[i] = buffer[slot]
        buffer[slot] = size + i
    order[n - size:] = rng.permutation(np.asarray(buffer, dtype=np.int64))
    return order
