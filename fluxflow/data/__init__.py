"""Datasets of (image [C, H, W] in [-1, 1], caption) and the deterministic, resumable loader that feeds the trainer.

    train = build_dataset(ds_cfg, img_size, channels, "train")
    loader = make_loader(train, batch_size, workers, seed, epoch, start_batch)   # one pass: epoch from start_batch

Three sources, picked by `ds_cfg.type`: `shapes` (procedural, built in), `folder` (images + captions file),
`webdataset` (tar shards, local or fsspec). `split="holdout"` is the part training never sees. `split="unseen"`
holds the held-out compositions (fluxflow/config/heldout_pairs.py: a `shapes` dataset's `holdout_pairs`, a folder's
`holdout_captions`): none of its captions is in the training split, and the `holdout` split leaves them out too, so
the two evaluations score seen and unseen captions apart. Every dataset has a `skipped` count of unreadable items
(always 0 for `shapes`).

`make_loader` is cheap: call it per epoch (or per resume point), passing the previous loader as `reuse` to keep
its worker processes. For map-style datasets the loader's `batch_sampler` is a `ResumableBatchSampler`; for a
WebDataset stream the position travels with the dataset (see webdataset_source.py for what resuming a stream
costs, and how it is split across torchrun ranks).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from types import SimpleNamespace

import torch

from fluxflow.data.folder import FolderDataset
from fluxflow.config.heldout_pairs import dataset_pairs, seen_pairs
from fluxflow.data.sampler import ResumableBatchSampler, epoch_permutation
from fluxflow.data.shapes import STREAM_HOLDOUT, STREAM_TRAIN, STREAM_UNSEEN, ShapesDataset, parse_caption
from fluxflow.data.webdataset_source import WebDatasetHoldout, WebDatasetSource, shards_fingerprint, shards_of

SPLITS = ("train", "holdout", "unseen")
MAX_AUTO_WORKERS = 8  # enough to decode 256-512 px JPEGs ahead of one GPU's flow step
PREFETCH_BATCHES = 4  # batches each worker keeps ready (torch's default is 2)


def build_dataset(ds_cfg, img_size: int, channels: int, split: str = "train", rank: int = 0,
                  world: int = 1, report: bool = True) -> torch.utils.data.Dataset:
    """The `split` of the dataset that `ds_cfg` (a DatasetConfig, or any object/mapping with its fields) names.
    `rank`/`world`: a webdataset stream's training split is the part rank `rank` of `world` reads (its shards);
    map-style datasets are whole on every rank (the loader's sampler takes each rank's slice). `report` False: a
    folder's training split counts what its captions file lacks without logging it (said by the steps already)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cfg = SimpleNamespace(**ds_cfg) if isinstance(ds_cfg, Mapping) else ds_cfg
    holdout = int(getattr(cfg, "holdout", 0) or 0)
    kind = getattr(cfg, "type", None)
    if kind == "shapes":
        seed = int(getattr(cfg, "seed", 0))
        held = dataset_pairs(cfg)
        seen = seen_pairs(held) if held else None  # None: every pair, drawn exactly as before pairs could be held
        if split == "unseen":
            return ShapesDataset(holdout if held else 0, seed, img_size, channels, stream=STREAM_UNSEEN,
                                 pairs=held or None)
        if split == "holdout":  # a disjoint random stream, not a slice of the training items
            return ShapesDataset(holdout, seed, img_size, channels, stream=STREAM_HOLDOUT, pairs=seen)
        return ShapesDataset(int(cfg.size), seed, img_size, channels, stream=STREAM_TRAIN, pairs=seen,
                             caption_dropout=getattr(cfg, "caption_dropout", None) or 0.0)
    if kind == "folder":
        return FolderDataset(cfg.path, getattr(cfg, "captions_file", None), img_size, channels, split, holdout,
                             holdout_captions=getattr(cfg, "holdout_captions", None), report=report)
    if kind == "webdataset":
        if split == "unseen":  # webdataset has no held-out captions: an empty split, like a hold-out of 0
            return ShapesDataset(0, 0, img_size, channels)
        if split == "holdout":
            return WebDatasetHoldout(cfg.urls, img_size, channels, holdout)
        return WebDatasetSource(cfg.urls, img_size, channels, getattr(cfg, "length", None), holdout, rank, world)
    raise ValueError(f"unknown dataset type {kind!r}; expected 'shapes', 'folder' or 'webdataset'")


def train_fingerprint(ds_cfg, build: Callable[[], torch.utils.data.Dataset]) -> str | None:
    """The training split's `fingerprint()` (what its config does not pin down; None where it has none: shapes), from
    the config where that is cheap: a webdataset's from its expanded shard list (a stat per local shard; building the
    split reads every shard's headers where `length` is not set). Other datasets' from the split `build()` makes (a
    folder's needs its listing)."""
    cfg = SimpleNamespace(**ds_cfg) if isinstance(ds_cfg, Mapping) else ds_cfg
    if getattr(cfg, "type", None) == "webdataset":
        return shards_fingerprint(shards_of(cfg.urls))  # as WebDatasetSource.fingerprint()
    train_set = build()
    return train_set.fingerprint() if hasattr(train_set, "fingerprint") else None


def collate_images_captions(batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    """[B, C, H, W] images and a list of B captions (captions are not tensors: the text encoder tokenizes them)."""
    images, captions = zip(*batch)
    return torch.stack(images), list(captions)


class CountingLoader(torch.utils.data.DataLoader):
    """A DataLoader that counts the skipped items of each batch as it hands the batch out, not as a worker decodes it
    ahead (why: fluxflow/data/skips.py SkipCounter). The batches of a map-style dataset are those of its
    `batch_sampler`, in order; a stream's are its pass's, from `start_batch`. `counts` (set by `make_loader`) False: a
    pass that the epoch reads again (the first flow step's latent-normalisation batches)."""

    def __iter__(self):
        skips = getattr(self.dataset, "skips", None)
        batches = super().__iter__()
        if skips is None or not self.counts:
            yield from batches
        elif isinstance(self.dataset, torch.utils.data.IterableDataset):
            for number, batch in enumerate(batches, self.dataset.start_batch):
                skips.count_batch(number)
                yield batch
        else:
            for indices, batch in zip(self.batch_sampler, batches):  # the sampler is a function of its position
                skips.count_items(indices)
                yield batch


def make_loader(dataset, batch_size: int, workers: int | str, seed: int, epoch: int = 0, start_batch: int = 0,
                pin_memory: bool = False, rank: int = 0, world: int = 1,
                reuse: torch.utils.data.DataLoader | None = None, counts: bool = True) -> CountingLoader:
    """A DataLoader over epoch `epoch` of `dataset`, starting at batch `start_batch`. Full batches only (the last
    partial batch is dropped), so every step sees the same batch shape. `batch_size` is the global batch: under
    torchrun each of the `world` ranks loads its 1/world of it. `workers`: a number or "auto" (`resolve_workers`).
    `pin_memory`: for batches a CUDA step copies to its GPU (the caller knows its device; pinning on a GPU host for a
    CPU step would start CUDA for nothing).

    `reuse`: the loader of the previous epoch over the same map-style dataset; it is moved to the new position and
    returned, so its persistent workers live on across epochs (a stream's workers must restart: they take the
    position with them). `counts`: see `CountingLoader`."""
    workers = resolve_workers(workers)
    # generator: each new iterator draws its workers' base seed from it, not from torch's global generator, which
    # another branch of the run may be drawing its initial weights from (fluxflow/runtime/global_rng.py).
    common = dict(num_workers=workers, collate_fn=collate_images_captions, pin_memory=pin_memory,
                  generator=torch.Generator(), worker_init_fn=_one_thread_per_worker if workers > 0 else None,
                  prefetch_factor=PREFETCH_BATCHES if workers > 0 else None)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if world != dataset.world:
            raise ValueError(f"this webdataset stream was built for {dataset.world} rank(s), not {world}")
        dataset.set_position(seed, epoch, start_batch, batch_size // world)
        # Not persistent: each pass must hand the workers the dataset's current position.
        loader = CountingLoader(dataset, batch_size=batch_size // world, drop_last=True, **common)
    elif reuse is not None and reuse.dataset is dataset and reuse.num_workers == workers:
        reuse.batch_sampler.set_position(epoch, start_batch)  # sampled in this process: workers need not know
        loader = reuse
    else:
        sampler = ResumableBatchSampler(len(dataset), batch_size, seed, rank=rank, world=world)
        sampler.set_position(epoch, start_batch)
        loader = CountingLoader(dataset, batch_sampler=sampler, persistent_workers=workers > 0, **common)
    loader.counts = counts
    return loader


def sequential_loader(dataset, batch_size: int, workers: int | str,
                      indices: list[int]) -> torch.utils.data.DataLoader:
    """Items `indices` of `dataset` in that order, in batches (the last one may be short): what the latent cache is
    built from (fluxflow/cache/latent_cache.py)."""
    workers = resolve_workers(workers)
    part = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=collate_images_captions, generator=torch.Generator(),
                                       worker_init_fn=_one_thread_per_worker if workers > 0 else None)


def resolve_workers(workers: int | str) -> int:
    """`auto`: 0 without CUDA (decoding in the training process; the built-in shapes render in microseconds), and on
    CUDA one worker per spare core of this process's share of the machine (LOCAL_WORLD_SIZE under torchrun), at
    most MAX_AUTO_WORKERS."""
    if workers != "auto":
        return int(workers)
    if not torch.cuda.is_available():
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(0, min(MAX_AUTO_WORKERS, per_process - 1))


def _one_thread_per_worker(_worker_id: int) -> None:
    # Decoding is per-sample Python/PIL work; W workers x N intra-op threads would only oversubscribe the cores.
    torch.set_num_threads(1)


__all__ = ["ResumableBatchSampler", "ShapesDataset", "build_dataset", "epoch_permutation", "make_loader",
           "parse_caption", "resolve_workers", "sequential_loader", "train_fingerprint"]
