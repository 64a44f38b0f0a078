"""Datasets of (image [C, H, W] in [-1, 1], caption) and the deterministic, resumable loader that feeds the trainer.

    train = build_dataset(ds_cfg, img_size, channels, "train")
    loader = make_loader(train, batch_size, workers, seed, epoch, start_batch)   # one pass: epoch from start_batch

Three sources, picked by `ds_cfg.type`: `shapes` (procedural, built in), `folder` (images + captions file),
`webdataset` (tar shards, local or fsspec). `split="holdout"` is the part training never sees. Every dataset has a
`skipped` count of unreadable items (always 0 for `shapes`).

`make_loader` is cheap: build one per epoch (or per resume point). For map-style datasets the loader's
`batch_sampler` is a `ResumableBatchSampler`; for a WebDataset stream the position travels with the dataset
(see webdataset_source.py for what resuming a stream costs).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace

import torch

from fluxflow.data.folder import FolderDataset
from fluxflow.data.sampler import ResumableBatchSampler, epoch_permutation
from fluxflow.data.shapes import STREAM_HOLDOUT, STREAM_TRAIN, ShapesDataset, parse_caption, shape_attributes
from fluxflow.data.webdataset_source import WebDatasetHoldout, WebDatasetSource

SPLITS = ("train", "holdout")


def build_dataset(ds_cfg, img_size: int, channels: int, split: str = "train") -> torch.utils.data.Dataset:
    """The `split` of the dataset that `ds_cfg` (a DatasetConfig, or any object/mapping with its fields) names."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cfg = SimpleNamespace(**ds_cfg) if isinstance(ds_cfg, Mapping) else ds_cfg
    holdout = int(getattr(cfg, "holdout", 0) or 0)
    kind = getattr(cfg, "type", None)
    if kind == "shapes":
        seed = int(getattr(cfg, "seed", 0))
        if split == "holdout":  # a disjoint random stream, not a slice of the training items
            return ShapesDataset(holdout, seed, img_size, channels, stream=STREAM_HOLDOUT)
        return ShapesDataset(int(cfg.size), seed, img_size, channels, stream=STREAM_TRAIN)
    if kind == "folder":
        return FolderDataset(cfg.path, getattr(cfg, "captions_file", None), img_size, channels, split, holdout)
    if kind == "webdataset":
        if split == "holdout":
            return WebDatasetHoldout(cfg.urls, img_size, channels, holdout)
        return WebDatasetSource(cfg.urls, img_size, channels, getattr(cfg, "length", None), holdout)
    raise ValueError(f"unknown dataset type {kind!r}; expected 'shapes', 'folder' or 'webdataset'")


def collate_images_captions(batch: list[tuple[torch.Tensor, str]]) -> tuple[torch.Tensor, list[str]]:
    """[B, C, H, W] images and a list of B captions (captions are not tensors: the text encoder tokenizes them)."""
    images, captions = zip(*batch)
    return torch.stack(images), list(captions)


def make_loader(dataset, batch_size: int, workers: int, seed: int, epoch: int = 0, start_batch: int = 0,
                pin_memory: bool | None = None, rank: int = 0, world: int = 1) -> torch.utils.data.DataLoader:
    """A DataLoader over epoch `epoch` of `dataset`, starting at batch `start_batch`. Full batches only (the last
    partial batch is dropped), so every step sees the same batch shape. `pin_memory` defaults to CUDA presence."""
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    common = dict(num_workers=workers, collate_fn=collate_images_captions, pin_memory=pin_memory,
                  worker_init_fn=_one_thread_per_worker if workers > 0 else None)
    if isinstance(dataset, torch.utils.data.IterableDataset):
        if world > 1:
            raise ValueError("webdataset streams are not sharded across torchrun ranks; use a folder or shapes "
                             "dataset with training.distributed.nproc_per_node > 1")
        dataset.set_position(seed, epoch, start_batch, batch_size)
        # Not persistent: each pass must hand the workers the dataset's current position.
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, drop_last=True, **common)
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, drop_last=True, rank=rank, world=world)
    sampler.set_position(epoch, start_batch)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, persistent_workers=workers > 0, **common)


def sequential_loader(dataset, batch_size: int, workers: int, indices: list[int]) -> torch.utils.data.DataLoader:
    """Items `indices` of `dataset` in that order, in batches (the last one may be short): what the latent cache is
    built from (fluxflow/cache/latent_cache.py)."""
    part = torch.utils.data.Subset(dataset, indices)
    return torch.utils.data.DataLoader(part, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=collate_images_captions,
                                       worker_init_fn=_one_thread_per_worker if workers > 0 else None)


def _one_thread_per_worker(_worker_id: int) -> None:
    # Decoding is per-sample Python/PIL work; W workers x N intra-op threads would only oversubscribe the cores.
    torch.set_num_threads(1)


__all__ = ["FolderDataset", "ResumableBatchSampler", "ShapesDataset", "WebDatasetHoldout", "WebDatasetSource",
           "build_dataset", "collate_images_captions", "epoch_permutation", "make_loader", "parse_caption",
           "sequential_loader", "shape_attributes"]
