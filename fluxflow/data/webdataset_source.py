"""`webdataset`: samples streamed from tar shards in the WebDataset layout, local or on anything fsspec opens.

`urls` is a string or a list of strings; each may hold brace patterns (`shards-{000..009}.tar`) or `::`-joined lists
(expanded by `webdataset.shardlists.expand_urls`) and may be a local path or an fsspec URL (`s3://`, `gs://`,
`https://`, `file://`). A sample is the run of consecutive tar members sharing a key (`dir/0001.jpg`,
`dir/0001.txt` -> key `dir/0001`); its image is the first of jpg/jpeg/png/webp/... and its caption the `txt`
(or `caption`, `text`, or a `json` with a "caption"/"text" field; none -> "").

Order, resume and workers (this is what the resumable sampler means for a stream):
- Epoch e visits the shards in `epoch_permutation(n_shards, seed, e)` order, and each shard in file order (shuffle
  samples when you write shards). The global sample sequence of an epoch is therefore a function of (seed, e).
- Resuming at batch b skips b * batch_size samples: whole shards by their sample counts (read from tar headers
  only, never decoded), then the remainder of the next shard, again without decoding. The cost grows with the
  number of *shards* skipped, not with decoding; it is documented, not O(1).
- With W DataLoader workers, worker w decodes only global batches b, b+W, b+2W...; the DataLoader takes one batch
  from each worker in turn, so the batches come out in exactly the single-process order for any W.
- Held-out split: the first `holdout` samples in url order. They are read once into memory (a small map-style
  dataset) and every training epoch leaves them out.
- A sample whose image does not decode is counted in `dataset.skipped` (once per epoch that meets it) and its place
  is taken by the worker's previous good sample (a caption that is not UTF-8 is kept, decoded as Latin-1, and
  counted too), so batch boundaries — and therefore resume — stay exact. A shard
  that cannot be opened is an error: that is storage failing, not a bad image.
- `length` (config) is the number of samples in all shards; without it the shards' headers are scanned once.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Callable, Iterator

import fsspec
import torch
from PIL import Image

from fluxflow.data.sampler import epoch_permutation
from fluxflow.data.skips import SkipCounter, decode_text
from fluxflow.data.transforms import load_image, pil_mode
from fluxflow.runtime.errors import DataError

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
CAPTION_EXTENSIONS = ("txt", "caption", "text")


def expand_shards(urls: str | list[str]) -> list[str]:
    from webdataset.shardlists import expand_urls  # the package's own brace / '::' expansion

    shards: list[str] = []
    for url in [urls] if isinstance(urls, str) else list(urls):
        shards.extend(expand_urls(url))
    shards = [s if "://" in s else os.path.expanduser(s) for s in shards]
    if not shards:
        raise ValueError(f"webdataset urls {urls!r} name no shard")
    return shards


def sample_key(member_name: str) -> tuple[str, str] | None:
    """(key, extension) by the WebDataset rule: the key is everything before the first dot of the basename."""
    directory, _, base = member_name.rpartition("/")
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None
    return (f"{directory}/{stem}" if directory else stem), ext.lower()


def iter_shard(url: str, want: Callable[[int], bool] = lambda j: True) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for every sample of one shard, in file order. Only samples j with want(j) have their
    bytes read; the others come with an empty dict, and on a seekable file their data is never read at all (tar
    headers only): that is how samples are counted and skipped cheaply."""
    with fsspec.open(url, "rb") as f:
        seekable = f.seekable()
        with tarfile.open(fileobj=f, mode="r:*" if seekable else "r|*") as tar:
            j, key, files, wanted = -1, None, {}, False
            for member in tar:
                parsed = sample_key(member.name) if member.isfile() else None
                if parsed is None or parsed[0].rpartition("/")[2].startswith("__"):
                    continue  # directories, metadata files
                if parsed[0] != key:
                    if key is not None:
                        yield key, files
                    j, key, files = j + 1, parsed[0], {}
                    wanted = want(j)
                if wanted:
                    files[parsed[1]] = tar.extractfile(member).read()
                tar.members = []  # headers are not needed again: memory stays flat on big shards
            if key is not None:
                yield key, files


def decode_sample(files: dict[str, bytes], img_size: int, channels: int,
                  on_repair: Callable[[], None] = lambda: None) -> tuple[torch.Tensor, str]:
    """(image, caption); `on_repair()` is called when the caption was not UTF-8 (kept, decoded as Latin-1)."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in files), None)
    if ext is None:
        raise ValueError(f"no image among {sorted(files)}")
    with Image.open(io.BytesIO(files[ext])) as img:
        image = load_image(img, img_size, channels)
    return image, _caption(files, on_repair)


def _caption(files: dict[str, bytes], on_repair: Callable[[], None]) -> str:
    for ext in CAPTION_EXTENSIONS:
        if ext in files:
            text, repaired = decode_text(files[ext])
            if repaired:
                on_repair()
            return text.strip()
    if "json" in files:
        meta = json.loads(files["json"])
        if isinstance(meta, dict):
            return str(meta.get("caption", meta.get("text", ""))).strip()
    return ""


class _ShardIndex:
    """Sample counts per shard (from headers, cached) and how many leading samples of each the holdout reserves."""

    def __init__(self, shards: list[str], holdout: int):
        self.shards, self.holdout = shards, holdout
        self._counts: dict[int, int] = {}

    def count(self, k: int) -> int:
        if k not in self._counts:
            self._counts[k] = sum(1 for _ in iter_shard(self.shards[k], want=lambda j: False))
        return self._counts[k]

    def reserved(self, k: int) -> int:
        """Leading samples of shard k that belong to the holdout (the first `holdout` samples in url order)."""
        before = 0
        for j in range(k):
            if before >= self.holdout:
                return 0
            before += self.count(j)
        return 0 if before >= self.holdout else min(self.holdout - before, self.count(k))

    def total(self) -> int:
        return sum(self.count(k) for k in range(len(self.shards)))


class WebDatasetSource(torch.utils.data.IterableDataset):
    """Training split of a set of shards: an IterableDataset whose pass is fixed by `set_position`."""

    def __init__(self, urls: str | list[str], img_size: int, channels: int = 3, length: int | None = None,
                 holdout: int = 0):
        pil_mode(channels)
        self.shards = expand_shards(urls)
        self.img_size, self.channels, self.holdout = img_size, channels, max(0, int(holdout))
        self.index = _ShardIndex(self.shards, self.holdout)
        self.index.reserved(len(self.shards) - 1)  # count the head shards the holdout spans once, before any fork
        total = int(length) if length is not None else self.index.total()
        self.length = total - self.holdout
        if self.length <= 0:
            raise ValueError(f"webdataset {urls!r}: holdout={holdout} leaves no training samples of {total}")
        self._skips = SkipCounter(f"unreadable samples in {urls!r}")
        self.seed, self.epoch, self.start_batch, self.batch_size = 0, 0, 0, 1

    def set_position(self, seed: int, epoch: int, start_batch: int, batch_size: int) -> None:
        """Fix the next pass: epoch `epoch` of `seed`, starting at batch `start_batch` of size `batch_size`."""
        self.seed, self.epoch, self.start_batch, self.batch_size = seed, epoch, start_batch, batch_size
        # Count the shards a resume skips here, once, so that every worker inherits the counts instead of re-reading.
        skip = start_batch * batch_size
        for k in epoch_permutation(len(self.shards), seed, epoch).tolist():
            available = self.index.count(k) - self.index.reserved(k)
            if skip < available:
                break
            skip -= available

    @property
    def skipped(self) -> int:
        return self._skips.count

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        bs, skip = self.batch_size, self.start_batch * self.batch_size
        g = skip  # global position, in samples, within the epoch's sequence
        last_good, owed = None, 0
        for k in epoch_permutation(len(self.shards), self.seed, self.epoch).tolist():
            reserved = self.index.reserved(k)
            if skip > 0:
                available = self.index.count(k) - reserved
                if skip >= available:  # skip the whole shard by its count: no data read
                    skip -= available
                    continue
            first, g0, skip = reserved + skip, g, 0  # sample `first` of this shard is at global position g0

            def mine(j: int, first=first, g0=g0) -> bool:
                return j >= first and ((g0 + j - first) // bs - self.start_batch) % n_workers == worker

            for j, (key, files) in enumerate(iter_shard(self.shards[k], want=mine)):
                if j >= first:
                    g = g0 + j - first + 1
                if not mine(j):
                    continue
                try:
                    sample = decode_sample(files, self.img_size, self.channels, on_repair=lambda k=k, key=key: (
                        self._skips.add(1, f"{self.shards[k]}:{key}: caption not UTF-8, decoded as Latin-1")))
                except Exception as exc:  # a bad image never stops training (see module docstring)
                    self._skips.add(1, f"{self.shards[k]}:{key}: {type(exc).__name__}: {exc}")
                    if last_good is None:
                        owed += 1
                    else:
                        yield last_good
                    continue
                for _ in range(owed + 1):
                    yield sample
                last_good, owed = sample, 0


class WebDatasetHoldout(torch.utils.data.Dataset):
    """The first `holdout` samples in url order, read once and kept as bytes; decoded on access."""

    def __init__(self, urls: str | list[str], img_size: int, channels: int = 3, holdout: int = 0):
        pil_mode(channels)
        self.img_size, self.channels = img_size, channels
        self._skips = SkipCounter(f"unreadable held-out samples in {urls!r}")
        self.samples: list[dict[str, bytes]] = []
        for shard in expand_shards(urls) if holdout > 0 else []:
            for _, files in iter_shard(shard):
                if len(self.samples) == holdout:
                    break
                self.samples.append(files)
            if len(self.samples) == holdout:
                break

    @property
    def skipped(self) -> int:
        return self._skips.count

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        for k in range(n):  # like the folder dataset: a bad sample is replaced by the next readable one
            i = (index + k) % n
            try:
                return decode_sample(self.samples[i], self.img_size, self.channels, on_repair=lambda i=i: (
                    self._skips.add(1, f"held-out sample {i}: caption not UTF-8, decoded as Latin-1")))
            except Exception as exc:
                self._skips.add(1, f"held-out sample {i}: {type(exc).__name__}: {exc}")
        raise DataError(f"no readable image among the {n} held-out samples")
