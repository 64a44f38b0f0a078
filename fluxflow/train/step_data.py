"""The data of one pipeline step: its training split, its held-out split, and how many batches make an epoch."""
from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch

from fluxflow.data import ResumableBatchSampler, build_dataset, make_loader
from fluxflow.runtime import distributed
from fluxflow.errors import DataError
from fluxflow.wording import counted

# Held-out images that the step's sample grids reconstruct (VAE steps); evaluation uses the whole held-out split.
N_HOLDOUT_SAMPLES = 8


@dataclass
class StepData:
    train_set: torch.utils.data.Dataset
    holdout_set: torch.utils.data.Dataset
    holdout_images: torch.Tensor | None  # the first N_HOLDOUT_SAMPLES held-out images, on the device
    batches_per_epoch: int  # full batches, capped by the step's max_steps
    # The training split's cached posterior means, item for item (flow steps with a frozen compressor:
    # fluxflow/train/step_cache.py); evaluation keeps using the images of `train_set`.
    latent_cache: torch.utils.data.Dataset | None = None

    @property
    def identity(self) -> dict | None:
        """What the training data is, for a resume to check (fluxflow/data/folder.py: a folder's item count and the
        hash of its listing; webdataset_source.py: a webdataset's shard count and the hash of their paths, sizes and
        modification times); None where the config alone fixes it (shapes)."""
        return getattr(self.train_set, "identity", None)

    @functools.cached_property
    def captions(self) -> list[str]:
        """The training split's distinct captions, sorted (without loading images where the dataset can say them),
        gathered once: a flow step's text cache and its count of cut captions both read them, and a large folder's
        take a pass over every item."""
        caption = getattr(self.train_set, "caption", None) or (lambda i: self.train_set[i][1])
        return sorted({caption(i) for i in range(len(self.train_set))})

    @property
    def batch_source(self) -> torch.utils.data.Dataset:
        """What the training loop loads: the cached latents where there are any, else the images."""
        return self.latent_cache if self.latent_cache is not None else self.train_set


def load_step_data(config, step, device: torch.device) -> StepData:
    """Under torchrun a webdataset's training split is this rank's part (its shards); `len()` then counts all ranks'
    samples, so batches per epoch are the same on every rank."""
    ds_cfg = config.dataset_for(step)
    train_set = build_dataset(ds_cfg, step.img_size, config.data.channels, "train", distributed.rank(),
                              distributed.world_size())
    holdout_set = build_dataset(ds_cfg, step.img_size, config.data.channels, "holdout")
    n_holdout = min(N_HOLDOUT_SAMPLES, len(holdout_set))
    holdout = torch.stack([holdout_set[i][0] for i in range(n_holdout)]).to(device) if n_holdout else None
    per_epoch = len(ResumableBatchSampler(len(train_set), step.batch_size, step.seed))
    n_batches = min(per_epoch, step.max_steps or per_epoch)
    if n_batches == 0:
        raise DataError(f"step {step.name}: dataset {step.dataset!r} has {counted(len(train_set), 'item')}, fewer "
                         f"than one batch of {step.batch_size}; lower batch_size or holdout, or add images")
    return StepData(train_set, holdout_set, holdout, n_batches)


def leading_inputs(data: StepData, batch_size: int, seed: int, n_items: int,
                   device: torch.device) -> Iterator[torch.Tensor]:
    """The first training batches of epoch 0 covering about `n_items` items of `data.batch_source` (images, or
    cached posterior means), on the device, one batch at a time (to measure the latent normalisation of the first
    flow step). Under torchrun a rank's webdataset part loads batches of batch_size / world: this rank reads as many
    more of them, so it covers `n_items` on every rank count (step_run broadcasts rank 0's measurement)."""
    world = getattr(data.batch_source, "world", 1)
    n_batches = max(1, -(-n_items // (batch_size // world)))
    # Not counted: the epoch trains these batches and counts their skipped items then.
    loader = make_loader(data.batch_source, batch_size, 0, seed, 0, 0, pin_memory=device.type == "cuda", world=world,
                         counts=False)
    for inputs, _ in itertools.islice(loader, n_batches):  # stops before loading batch n_batches (not cached)
        yield inputs.to(device)


# Samples a flow step reads before it trains, at its start, to see that its data has captions at all.
CAPTION_PROBE = 64


def captioned_batches(batches: Iterator[tuple[torch.Tensor, list[str]]], step) -> Iterator[tuple[torch.Tensor, list]]:
    """`batches`, unchanged, once their first CAPTION_PROBE samples (all of them when fewer) are seen to hold at
    least one caption; else a DataError before any of them is trained on. A flow step learns text-to-image from the
    captions: data that has none (a webdataset tar written `*.png *.txt`, whose samples' files are not adjacent;
    captions under another name) trained on empty prompts to exit 0, said only by a warning. One caption among them
    is enough, so data with some empty captions (dropped for classifier-free guidance, `photo.jpg<TAB>`) passes."""
    head, seen = [], 0
    for batch in batches:
        head.append(batch)
        seen += len(batch[1])
        if any(batch[1]) or seen >= CAPTION_PROBE:
            break
    if head and not any(any(captions) for _, captions in head):
        raise DataError(f"step {step.name}: none of the first {seen} samples of dataset {step.dataset!r} has a "
                        "caption, and a flow step learns from captions; see the data warnings above (a webdataset "
                        "sample's files must be adjacent in its tar) and docs/CONFIG.md")
    yield from head
    yield from batches


@dataclass
class CutCaptions:
    """Of `seen` captions, the `cut` ones longer than the text encoder reads (its `max_len` tokens, BOS and EOS
    included: model.text_max_len), whose ends training never sees; `first`: the first of them."""

    seen: int = 0
    cut: int = 0
    first: str = ""

    def count(self, captions: Iterable[str], encoder) -> "CutCaptions":
        for caption in captions:
            self.seen += 1
            if encoder.token_count(caption) > encoder.max_len:
                self.cut, self.first = self.cut + 1, self.first or caption
        return self

    def line(self, step, encoder, which: str) -> str | None:
        """The warning a step logs once (`which`: what captions were counted), or None when none is cut."""
        if not self.cut:
            return None
        return (f"{self.cut} of the {self.seen} {which} captions of dataset {step.dataset!r} are longer than the text "
                f"encoder reads (model.text_max_len: {encoder.max_len} tokens): training cuts their ends; first: "
                f"{self.first[:100]!r}")


def counting_cut_captions(batches: Iterator[tuple[torch.Tensor, list[str]]], encoder,
                          on_end: Callable[[CutCaptions], None]) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """`batches`, unchanged, their captions counted (CutCaptions) as they pass, `on_end` called with the count once
    they are all seen: a stream (webdataset) cannot be asked for its captions before it is read. On the host, from the
    captions the loader gives: nothing waits on the device."""
    counted = CutCaptions()
    for batch in batches:
        counted.count(batch[1], encoder)
        yield batch
    on_end(counted)
