"""A count of unreadable items that DataLoader worker processes share with the main process.

A corrupt file must never stop a run, but it must not go unnoticed either: every file-backed dataset counts what it
skipped or repaired (`dataset.skipped`, backed by its `dataset.skips` counter) and logs one warning per kind of
problem, the first time it meets it, naming the item: an unreadable image, a caption that was not UTF-8, a sample
without a caption. What a dataset finds when it is built (a captions file's bad lines, its missing files) is logged
as it is counted, one line per problem. A training split counts the problems of the batches the step trains, when
the loader hands each one out (not when a worker decodes it ahead): the count is part of the trained position. The
counter's state travels in the step's checkpoint, so a resumed step continues its count and reports what an
uninterrupted one does. The runner reports the training split's count as `skipped_samples` at each epoch end, and
the held-out split's as `skipped_holdout_samples` (fluxflow/train/step_report.py). What workers meet lives in shared
memory (multiprocessing.Value and RawArray), so the marks made in DataLoader worker processes, forked or spawned, are
what the main process reads; no tensor and no host sync is involved.

Text of any encoding: a caption is decoded as UTF-8 and, failing that, as Latin-1
(fluxflow/config/file_checks.py, `decode_text`): the caption is kept (repaired) and counted, never fatal.
"""
from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterator
from typing import TypeVar

log = logging.getLogger("fluxflow.data")
T = TypeVar("T")


# Kinds of problem met while reading, each logged the first time (in any process) and counted every time.
KINDS = {
    "unreadable": "skipping an unreadable image of {where}",
    "repaired": "a caption of {where} is not UTF-8, decoded as Latin-1 and kept",
    "uncaptioned": "a sample of {where} has no caption, trained with an empty one",
    "imageless": "skipping a sample of {where} that has no image",
    "caption": "skipping a sample of {where} whose caption cannot be read",
}


class SkipCounter:
    """`found` counts and logs what the dataset found wrong when it was built. A training split counts each batch as
    the loader hands it out (fluxflow/data/__init__.py CountingLoader), not as workers decode it ahead
    (PREFETCH_BATCHES), which a step that stops (`max_steps`, the epoch's end, an interrupt) never trains: the count
    is a function of the batches trained, the same for any number of workers and with or without a resume:
    - an indexed dataset (`deferred`): `mark(i)` remembers item i unreadable (it is not decoded again) and says the
      first; `count_items(indices)` counts, once per run, the unreadable items each of a batch's items stood in for
      (item i and the unreadable ones after it: the stand-in is the next readable item, fluxflow/data/folder.py);
    - a stream: `open_pass(n)` before a pass's workers start; `hold(b, ...)` keeps the problems met in the pass's
      batch b; `count_batch(b)` counts them (every epoch that trains them).
    Not deferred (a held-out split, read by samples and evaluation): `mark(i)` counts item i once, as it is met."""

    def __init__(self, where: str, n_items: int = 0, metric: str | None = "skipped_samples", deferred: bool = False):
        self.where = where  # the folder or the shards' urls, and which split when it is not the training one
        self.metric = metric  # the metric that reports the count; None: a split no metric reports
        self.deferred = deferred
        # Shared memory: workers (forked or spawned by the DataLoader) update the numbers the trainer reads.
        self._count = multiprocessing.Value("q", 0)
        self._flags = multiprocessing.RawArray("b", max(n_items, 1))  # items met unreadable
        self._counted = multiprocessing.RawArray("b", max(n_items, 1))  # items counted (each once)
        self._held = multiprocessing.RawArray("q", 1)  # problems per batch of a stream's running pass
        self._logged = multiprocessing.RawArray("b", len(KINDS))  # which kinds have been logged already

    def found(self, n: int, message: str, say: bool = True) -> None:
        """`n` entries dropped or repaired when the dataset was built: counted, and `message` logged (unless `say` is
        False: said already where the dataset was built before)."""
        with self._count.get_lock():
            self._count.value += n
        if say:
            log.warning("%s: %s", self.where, message)

    def warn(self, reason: str, kind: str = "unreadable") -> None:
        """Log the first problem of each kind (in any process); the others are only counted."""
        k = list(KINDS).index(kind)
        with self._count.get_lock():
            first = not self._logged[k]
            self._logged[k] = 1
        if first:
            further = f"counted in {self.metric}, not logged" if self.metric else "not logged"
            log.warning("%s: %s (further ones are %s)", KINDS[kind].format(where=self.where), reason, further)

    def mark(self, index: int, reason: str, kind: str = "unreadable") -> None:
        with self._count.get_lock():
            first = not self._flags[index]
            self._flags[index] = 1
        if first:
            self.warn(reason, kind)
            if not self.deferred:
                self._count_item(index)

    def _count_item(self, index: int) -> None:
        with self._count.get_lock():
            if not self._counted[index]:
                self._counted[index] = 1
                self._count.value += 1

    def count_items(self, indices: list[int]) -> None:
        """A batch of these items is trained: count the unreadable items met for it (marked when it was decoded),
        each once per run."""
        n = len(self._flags)
        for index in indices:
            for k in range(n):  # the run of unreadable items from `index` on, which its stand-in was read past
                i = (index + k) % n
                if not self._flags[i]:
                    break
                self._count_item(i)

    def open_pass(self, n_batches: int) -> None:
        """A stream's new pass of `n_batches` batches: call before its workers start (they inherit the array)."""
        self._held = multiprocessing.RawArray("q", max(n_batches, 1))

    def hold(self, batch: int, reason: str, kind: str = "unreadable") -> None:
        """A problem met in batch `batch` of the running pass: said if it is the first of its kind, counted when the
        batch is trained (`count_batch`)."""
        self.warn(reason, kind)
        self._held[batch] += 1  # one process decodes each batch

    def count_batch(self, batch: int) -> None:
        with self._count.get_lock():
            self._count.value += self._held[batch]
            self._held[batch] = 0

    def is_marked(self, index: int) -> bool:
        return bool(self._flags[index])

    def marked(self) -> list[int]:
        """The items met unreadable so far, ascending."""
        return [i for i, flag in enumerate(bytes(self._flags)) if flag]

    @property
    def count(self) -> int:
        return int(self._count.value)

    def state_dict(self) -> dict:
        """The count and the counted items, for a step's checkpoint: a resumed step continues the count instead of
        starting again from what its own process meets (fluxflow/train/step_report.py)."""
        with self._count.get_lock():
            return {"count": int(self._count.value),
                    "marked": [i for i, flag in enumerate(bytes(self._counted)) if flag]}

    def load_state_dict(self, state: dict) -> None:
        """Merge a checkpoint's counts into this counter, which may already hold what this process met before the
        resume (the items a dataset skips when it is built): the saved counted items are counted (each once) and
        known unreadable, and the skips without an item (build-time lines, stream samples) are raised to the saved
        number, never added twice."""
        with self._count.get_lock():
            for i in state["marked"]:
                if 0 <= i < len(self._flags):
                    self._flags[i] = 1
                    self._count_item(i)
            unindexed_now = self._count.value - sum(bytes(self._counted))
            unindexed_saved = int(state["count"]) - len(state["marked"])
            self._count.value += max(0, unindexed_saved - unindexed_now)


class CountsSkips:
    """A dataset whose `skips` counter is the dataset protocol's `skipped` count."""

    skips: SkipCounter

    @property
    def skipped(self) -> int:
        return self.skips.count


def fill_unreadable(batches: Iterator[list[T | None]]) -> Iterator[T]:
    """The samples of `batches` with each unreadable one (None) replaced, so that every batch keeps its size: by the
    batch's previous readable sample (its first readable one when none comes before). A batch with nothing
    readable repeats the last readable sample before it, or, at the very start, the first one after it."""
    last, waiting = None, 0
    for batch in batches:
        readable = [s for s in batch if s is not None]
        if not readable:
            if last is None:
                waiting += len(batch)
            else:
                yield from [last] * len(batch)
            continue
        yield from [readable[0]] * waiting
        waiting, previous = 0, readable[0]
        for sample in batch:
            previous = sample if sample is not None else previous
            yield previous
        last = previous
