"""`webdataset`: samples streamed from tar shards in the WebDataset layout, local or on anything fsspec opens.

`urls` is a string or a list of strings; each may hold brace patterns (`shards-{000..009}.tar`) or `::`-joined lists
(expanded as `webdataset.shardlists.expand_urls` does, by fluxflow/config/file_checks.py expand_shards, which
validation runs too) and may be a local path or an fsspec URL (`s3://`, `gs://`,
`https://`, `file://`). A sample is the run of consecutive tar members sharing a key (`dir/0001.jpg`,
`dir/0001.txt` -> key `dir/0001`); its image is the first of jpg/jpeg/png/webp/... and its caption the `txt`
(or `caption`, `text`, or a `json` with a "caption"/"text" string; none -> "", counted and logged: a caption under
another name would otherwise train the model without text, unnoticed).

Order, ranks, resume and workers (what the resumable sampler means for a stream):
- Ranks (torchrun): each rank reads its own shards, split once for the whole run and balanced by sample count
  (fluxflow/data/stream_order.py assign_shards; every rank reads every shard's tar headers once to count). All ranks
  yield the same number of samples per epoch, the smallest rank's: a rank with more drops the last ones of its
  epoch's order (at most about one shard's worth; other ones each epoch). No sample is seen twice in an epoch.
- Epoch e visits a rank's shards in `epoch_permutation(n_shards, seed, e)` order, each in file order, through a
  shuffle buffer of SHUFFLE_BUFFER samples seeded by (seed, e, rank, world). The order is computed from the sample
  counts before anything is read, so an epoch's sequence is a function of (seed, e, rank, world).
- Resuming at batch b is exact (same nproc_per_node): the inputs the remaining outputs need are known from the order;
  whole shards before the first of them are skipped by their sample counts (read from tar headers only, never
  decoded), the rest of the stream is read but only the needed samples are decoded. The cost grows with the number
  of shards skipped, not with decoding; it is documented, not O(1).
- With W DataLoader workers, worker w decodes only this rank's batches b, b+W, b+2W...; the DataLoader takes one
  batch from each worker in turn, so the batches come out in exactly the single-process order for any W (each worker
  reads its rank's shards, decoding only its own samples, and holds at most about its share of the buffer).
- Held-out split: the first `holdout` samples in url order. They are read once into memory (a small map-style
  dataset) and every training epoch leaves them out.
- A sample whose image does not decode is counted in `dataset.skipped` (once per epoch that trains it: when the
  loader hands out its batch, not when a worker decodes it ahead) and its place is taken by a readable sample of its
  batch (fluxflow/data/skips.py fill_unreadable), so batch boundaries — and
  therefore resume — stay exact, whatever the number of workers. A caption that is not UTF-8 is kept, decoded as
  Latin-1, and counted too, as is a sample without a caption. A shard that cannot be opened is an error: that is
  storage failing, not a bad image (retried, and so is one whose server cannot be reached: one line saying so); one
  that does not exist or is not a tar archive is a DataError (not retried). A run does not start when a shard is
  missing, local or on an object store (fluxflow/config/file_checks.py shards_issues).
- `length` (config): samples in all shards; without it (or with several ranks) the tar headers are scanned once.
  A pass reads every shard to its end anyway (headers only past the samples it decodes): there a `length` larger
  than the shards hold is a DataError, and a smaller one is said in a warning with the real count (each epoch then
  trains on `length` samples, the first of its shard order).
"""
from __future__ import annotations

import gzip
import hashlib
import itertools
import logging
import lzma
import multiprocessing
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator

import fsspec
import numpy as np
import torch

from fluxflow.config.file_checks import expand_shards
from fluxflow.data.sampler import epoch_permutation
from fluxflow.data.skips import CountsSkips, SkipCounter, fill_unreadable
from fluxflow.data.stream_order import assign_shards, buffer_order
from fluxflow.data.transforms import pil_mode
from fluxflow.data.webdataset_sample import decode_sample, sample_key
from fluxflow.errors import DataError
from fluxflow.storage.fetch import http_timeouts
from fluxflow.storage.store_errors import unreachable
from fluxflow.wording import counted

log = logging.getLogger("fluxflow.data")

# Samples each rank's stream shuffles among: mixes neighbouring samples of a shard (and across shard boundaries).
# Each worker holds the encoded bytes of at most about this many samples (its share of them).
SHUFFLE_BUFFER = 1000


def iter_shard(url: str, want: Callable[[int], bool] = lambda j: True) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) for every sample of one shard, in file order. Only samples j with want(j) have their
    bytes read; the others come with an empty dict, and on a seekable file their data is never read at all (tar
    headers only): that is how samples are counted and skipped cheaply."""
    with _opened(url) as f, _tar(url, f) as tar:
        yield from _samples(url, tar, want)


def _opened(url: str):
    """The shard `url`, open for reading. A shard that does not exist is a DataError of one line naming the URL (not
    retried: a retry met the same wall after a minute, and the user got a traceback ending in the store's
    `FileNotFoundError: bucket/key`). One whose server cannot be reached says so in one line (it was a network
    failure called a missing file) and is retried, as other failures of the storage are: this runs for every shard
    of every epoch, and a server that restarts or a connection reset hours into a run is gone by the retry (a store
    unreachable from the start is refused at the run's start, fluxflow/config/file_checks.py)."""
    try:
        return fsspec.open(url, "rb", **http_timeouts(url)).open()
    except Exception as exc:
        if line := unreachable(url, exc):  # first: fsspec's http raises FileNotFoundError for a refused connection
            raise OSError(f"webdataset shard {url} could not be read: {line}") from None
        if isinstance(exc, FileNotFoundError):
            raise DataError(f"webdataset shard {url} does not exist") from None
        raise


def shards_of(urls: str | list[str]) -> list[str]:
    """The shards `urls` names (fluxflow/config/file_checks.py expand_shards), where a step reads them; a DataError
    (not retried) where they cannot be: a `${NAME}` whose WDS_NAME is not set where the step runs (a Ray node, a
    worker) was a ValueError, retried, with a 40-line traceback and exit 1."""
    try:
        return expand_shards(urls)
    except ValueError as exc:
        raise DataError(str(exc)) from None


def _samples(url: str, tar: tarfile.TarFile, want: Callable[[int], bool]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """iter_shard's samples of an open archive. An archive cut short (a download or copy that stopped, a disk that
    filled) is a DataError naming the shard: reading it again ends at the same byte (not retried)."""
    try:
        j, key, files, wanted = -1, None, {}, False
        for member in tar:
            if member.issym() and sample_key(member.name) is not None:
                # the link, not the file: the sample lost its image, and "a caption without an image ... write it
                # sorted" blamed the order of a tar written as the docs say
                raise DataError(f"webdataset shard {url}: {member.name} is a symbolic link (to {member.linkname}), "
                                "which a tar stores as the link, not the file: write the shard with the files the "
                                "links point to (GNU tar: -h, --dereference)")
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
        if not _ends_as_archives_end(tar):
            raise tarfile.ReadError("it ends without the end-of-archive block, after a whole file")
    except (tarfile.ReadError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
        raise DataError(f"webdataset shard {url} is truncated or corrupt ({exc or type(exc).__name__}); download or "
                        "copy it again") from None
    if key is not None:
        yield key, files


def _ends_as_archives_end(tar: tarfile.TarFile) -> bool:
    """Whether the archive ended as tar archives end, with a whole block (of zeros) where tarfile looked for the next
    header. At a missing or cut header it stops without a word, having read less than a block: a shard cut there was
    read as a shorter one (its later samples gone, the last one's caption perhaps lost). Read from where tarfile left
    off, without seeking back (a gzip shard would be decompressed again from its start)."""
    return tar.fileobj.tell() - tar.offset == tarfile.BLOCKSIZE


def _tar(url: str, f) -> tarfile.TarFile:
    """The tar archive in `f`; a DataError (not retried: reading it again fails the same way) when it is none."""
    try:
        return tarfile.open(fileobj=f, mode="r:*" if f.seekable() else "r|*")
    except tarfile.ReadError:
        raise DataError(f"webdataset shard {url} is not a tar archive (plain, gzip, bzip2 or xz)") from None


def shards_fingerprint(shards: list[str]) -> str:
    """sha256 over the shards' URLs, in url order, with each local shard's size and modification time: shards
    regenerated at the same paths differ in them, and no tar is read. A shard on an object store or a server counts by
    its URL alone (its size would cost a request per shard), so one replaced there under its name is not seen."""
    digest = hashlib.sha256()
    for shard in shards:
        stat = "remote"
        if "://" not in shard or shard.startswith("file://"):
            try:
                st = os.stat(shard.removeprefix("file://"))
                stat = f"{st.st_size}\t{st.st_mtime_ns}"
            except OSError:  # gone: the step stops when it opens it
                stat = "missing"
        digest.update(f"{shard}\t{stat}\n".encode("utf-8"))
    return digest.hexdigest()


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


class WebDatasetSource(CountsSkips, torch.utils.data.IterableDataset):
    """Training split of a set of shards, as rank `rank` of `world` reads it: an IterableDataset whose pass is fixed
    by `set_position`. `len()` is `world` × the samples each rank yields per epoch."""

    def __init__(self, urls: str | list[str], img_size: int, channels: int = 3, length: int | None = None,
                 holdout: int = 0, rank: int = 0, world: int = 1):
        pil_mode(channels)
        self.urls, self.shards = urls, shards_of(urls)
        self.img_size, self.channels, self.holdout = img_size, channels, max(0, int(holdout))
        self.rank, self.world = rank, world
        self.index = _ShardIndex(self.shards, self.holdout)
        self.index.reserved(len(self.shards) - 1)  # count the head shards the holdout spans once, before any fork
        if world > 1:  # every rank counts every shard (headers only) to split them evenly
            available = [self.index.count(k) - self.index.reserved(k) for k in range(len(self.shards))]
            ranks = assign_shards(available, world)
            per_rank = [sum(available[k] for k in shards) for shards in ranks]
            self.my_shards, self.rank_inputs, self.rank_length = set(ranks[rank]), per_rank[rank], min(per_rank)
        else:
            total = int(length) if length is not None else sum(map(self.index.count, range(len(self.shards))))
            self.my_shards = set(range(len(self.shards)))
            self.rank_inputs = self.rank_length = total - self.holdout
        if self.rank_length <= 0:
            raise DataError(f"webdataset {urls!r}: holdout={holdout} leaves no training samples"
                            + (f" for rank {rank}" if world > 1 else f" ({counted(total, 'sample')} in its shards)"))
        self.length = world * self.rank_length
        # `length` from the config, believed until a pass has read the whole stream (whose end checks it); the flag,
        # shared with the workers, says a smaller `length` once per run.
        self.said_length = int(length) if length is not None and world == 1 else None
        self._length_warned = multiprocessing.Value("b", 0)
        # What a step's latest.pt records of its data (StepState.data_identity), as a folder's listing: the held-out
        # head and each epoch's order follow from the shards, so a resume over shards regenerated at their paths (or
        # other files there) replayed another stream without a word; it is set aside instead. The expanded list:
        # a `${NAME}` in urls stands for whatever $WDS_NAME says now.
        self.identity = {"shards": len(self.shards), "sha256": shards_fingerprint(self.shards)}
        # Public: its state travels in a step's checkpoint (fluxflow/train/step_report.py).
        self.skips = SkipCounter(repr(urls))
        self.set_position(0, 0, 0, 1)

    def fingerprint(self) -> str:
        """What the shards are beyond the config (shards_fingerprint, as this split was built): keys the fd_ours
        feature network (as a folder's `fingerprint()` does, fluxflow/evaluation/frechet.py)."""
        return self.identity["sha256"]

    def set_position(self, seed: int, epoch: int, start_batch: int, batch_size: int) -> None:
        """Fix the next pass: epoch `epoch` of `seed`, starting at batch `start_batch` of this rank's batches of
        `batch_size` samples. The pass's order is computed here, before the DataLoader forks its workers."""
        self.start_batch, self.batch_size = start_batch, batch_size
        self.skips.open_pass(-(-self.rank_length // batch_size))  # the pass's problems, held per batch till trained
        order = buffer_order(self.rank_inputs, SHUFFLE_BUFFER, [seed, epoch, self.rank, self.world])
        self._output_of = np.empty_like(order)
        self._output_of[order] = np.arange(order.size)  # input position -> output position
        wanted = order[start_batch * batch_size:self.rank_length]
        first_input = int(wanted.min()) if wanted.size else self.rank_inputs
        # Whole shards before the first input wanted are skipped by their counts (no data read): found here, once, so
        # that every worker inherits the counts instead of re-reading them.
        shard_order = [k for k in epoch_permutation(len(self.shards), seed, epoch).tolist() if k in self.my_shards]
        skipped = inputs = 0  # shards at the head of this rank's epoch order, and the inputs they hold
        for k in shard_order if first_input > 0 else []:
            available = self.index.count(k) - self.index.reserved(k)
            if inputs >= first_input or inputs + available > first_input:
                break
            skipped, inputs = skipped + 1, inputs + available
        self._shards_to_read, self._first_position = shard_order[skipped:], inputs

    def __len__(self) -> int:
        return self.length

    def _my_outputs(self, worker: int, n_workers: int) -> Iterator[int]:
        """Output positions this worker yields, in order: those of the batches start + w, start + w + W, ... (the
        DataLoader takes one batch from each worker in turn: the single-process order for any W)."""
        bs = self.batch_size
        for batch in itertools.count(self.start_batch + worker, n_workers):
            if batch * bs >= self.rank_length:
                return
            yield from range(batch * bs, min((batch + 1) * bs, self.rank_length))

    def _is_mine(self, output: int, worker: int, n_workers: int) -> bool:
        batch = output // self.batch_size
        return (self.start_batch <= batch and output < self.rank_length
                and (batch - self.start_batch) % n_workers == worker)

    def _inputs(self, is_mine) -> Iterator[tuple[int, str, str, dict[str, bytes]]]:
        """(input position, shard, key, files) of this rank's stream, from the first shard `set_position` did not
        skip; only inputs with is_mine(position) have their bytes read."""
        position = self._first_position
        for k in self._shards_to_read:
            reserved = self.index.reserved(k)
            first = position

            def mine(j: int, first=first, reserved=reserved) -> bool:
                p = first + j - reserved
                return j >= reserved and p < self.rank_inputs and is_mine(p)

            for j, (key, files) in enumerate(iter_shard(self.shards[k], want=mine)):
                if j >= reserved:
                    position = first + j - reserved + 1
                    if mine(j):
                        yield position - 1, self.shards[k], key, files
        if position > self.rank_inputs:
            self._longer_than_said(position + self.holdout)

    def _longer_than_said(self, held: int) -> None:
        """Say once per run (in whichever process reads the stream's end first) that the shards outnumber `length`."""
        with self._length_warned.get_lock():
            first, self._length_warned.value = not self._length_warned.value, 1
        if first:
            log.warning("webdataset %r: its shards hold %d samples, more than `length` says (%d); each epoch trains "
                        "on %d of them (the first of its shard order) and reads past the others: correct `length` "
                        "or leave it out (the tar headers are then counted)", self.urls, held, self.said_length,
                        self.rank_length)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, str]]:
        info = torch.utils.data.get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return fill_unreadable(self._batches(worker, n_workers))

    def _batches(self, worker: int, n_workers: int) -> Iterator[list[tuple[torch.Tensor, str] | None]]:
        """This worker's batches, in order; None for a sample whose image does not decode."""
        outputs, output_of = self._my_outputs(worker, n_workers), self._output_of

        def note(kind: str, reason: str) -> None:  # counted when the batch is trained, not when decoded ahead
            self.skips.hold(next_out // self.batch_size, reason, kind)

        pending: dict[int, tuple[str, str, dict[str, bytes]]] = {}  # read, waiting for their turn
        batch: list[tuple[torch.Tensor, str] | None] = []
        last: list[tuple[torch.Tensor, str] | None] = []  # held back until the stream's end checked `length`
        next_out = next(outputs, None)
        for position, shard, key, files in self._inputs(
                lambda p: self._is_mine(int(output_of[p]), worker, n_workers)):
            pending[int(output_of[position])] = (shard, key, files)
            while next_out is not None and next_out in pending:  # the buffer lets out samples in output order
                shard_, key_, files_ = pending.pop(next_out)
                batch.append(decode_sample(files_, self.img_size, self.channels, note, f"{shard_}:{key_}"))
                ends_batch = (next_out + 1) % self.batch_size == 0 or next_out + 1 == self.rank_length
                next_out = next(outputs, None)
                if ends_batch:
                    # A `length` from the config is checked where the stream ends, before this worker's last batch
                    # is let out: a loader that stops after the epoch's last batch never reads past it.
                    if next_out is None and self.said_length is not None:
                        last = batch
                    else:
                        yield batch
                    batch = []
        if next_out is not None:  # the order placed samples where the shards hold none: `length` is too large
            held = sum(self.index.count(k) for k in range(len(self.shards)))
            raise DataError(f"webdataset {self.urls!r}: its shards hold {counted(held, 'sample')}, fewer than `length` "
                            f"says ({self.rank_inputs + self.holdout}); correct `length` or leave it out (the tar "
                            "headers are then counted)")
        if last:
            yield last


class WebDatasetHoldout(CountsSkips, torch.utils.data.Dataset):
    """The first `holdout` samples in url order, read once and kept as bytes; decoded on access."""

    def __init__(self, urls: str | list[str], img_size: int, channels: int = 3, holdout: int = 0):
        pil_mode(channels)
        self.img_size, self.channels, self.urls = img_size, channels, urls
        shards = shards_of(urls) if holdout > 0 else []
        in_url_order = (files for shard in shards for _, files in iter_shard(shard))
        self.samples: list[dict[str, bytes]] = list(itertools.islice(in_url_order, max(holdout, 0)))
        self.skips = SkipCounter(f"the held-out samples of {urls!r}", len(self.samples), "skipped_holdout_samples")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        for k in range(n):  # like the folder dataset: a bad sample is replaced by the next readable one
            i = (index + k) % n
            # Each held-out sample is counted once, however many evaluations read it.
            sample = decode_sample(self.samples[i], self.img_size, self.channels,
                                   lambda kind, reason, i=i: self.skips.mark(i, reason, kind), f"held-out sample {i}")
            if sample is not None:
                return sample
        raise DataError(f"webdataset {self.urls!r}: no readable image among its {counted(n, 'held-out sample')} (the "
                        "first `holdout` in url order); see the warning above")
