"""A count of unreadable items that DataLoader worker processes share with the main process.

A corrupt file must never stop a run, but it must not go unnoticed either: every file-backed dataset counts what it
skipped or repaired (`dataset.skipped`, backed by its `dataset.skips` counter) and logs one warning per kind of
problem, the first time it meets it, naming the item: an unreadable image, a caption that was not UTF-8, a sample
without a caption. What a dataset finds when it is built (a captions file's bad lines, its missing files) is logged
as it is counted, one line per problem. The counter's state travels in the step's checkpoint, so a resumed step
continues its count. The runner reports the training split's count as `skipped_samples` at each epoch end
(fluxflow/train/step_report.py). The count lives in shared memory (multiprocessing.Value), so the increments made in
DataLoader worker processes, forked or spawned, are what the main process reads; no tensor and no host sync is
involved.

Text of any encoding: a caption is decoded as UTF-8 and, failing that, as Latin-1
(fluxflow/config/file_checks.py, `decode_text`): the caption is kept (repaired) and counted, never fatal.
"""
from __future__ import annotations

import contextlib
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
    """`add` counts skips that have no index (stream samples); `mark(i)` counts item i once, however many epochs or
    workers meet it, and remembers it so that it is not decoded again; `found` counts and logs what the dataset found
    wrong when it was built."""

    def __init__(self, where: str, n_items: int = 0, metric: str | None = "skipped_samples"):
        self.where = where  # the folder or the shards' urls, and which split when it is not the training one
        self.metric = metric  # the metric that reports the count; None: a split no metric reports
        # Shared memory: workers (forked or spawned by the DataLoader) update the numbers the trainer reads.
        self._count = multiprocessing.Value("q", 0)
        self._flags = multiprocessing.RawArray("b", max(n_items, 1))
        self._logged = multiprocessing.RawArray("b", len(KINDS))  # which kinds have been logged already

    def found(self, n: int, message: str, say: bool = True) -> None:
        """`n` entries dropped or repaired when the dataset was built: counted, and `message` logged (unless `say` is
        False: said already where the dataset was built before)."""
        if n > 0:
            with self._count.get_lock():
                self._count.value += n
            if say:
                log.warning("%s: %s", self.where, message)

    def add(self, n: int, reason: str, kind: str = "unreadable") -> None:
        if n <= 0:
            return
        k = list(KINDS).index(kind)
        with self._count.get_lock():
            first = not self._logged[k]
            self._logged[k] = 1
            self._count.value += n
        if first:
            further = f"counted in {self.metric}, not logged" if self.metric else "not logged"
            log.warning("%s: %s (further ones are %s)", KINDS[kind].format(where=self.where), reason, further)

    def mark(self, index: int, reason: str, kind: str = "unreadable") -> None:
        with self._count.get_lock():  # a recursive lock: `add` takes it again, flag and count change together
            if not self._flags[index]:
                self._flags[index] = 1
                self.add(1, reason, kind)

    @contextlib.contextmanager
    def uncounted_pass(self):
        """A pass over samples that the epoch reads again (the first flow step's measurement of the latent
        normalisation): the stream samples it meets are counted by the epoch, not twice; the items it marks stay
        marked, counted once as always."""
        with self._count.get_lock():
            unindexed = self._count.value - sum(bytes(self._flags))
        try:
            yield
        finally:
            with self._count.get_lock():
                self._count.value = sum(bytes(self._flags)) + unindexed

    def is_marked(self, index: int) -> bool:
        return bool(self._flags[index])

    def marked(self) -> list[int]:
        """The items marked so far, ascending."""
        return [i for i, flag in enumerate(bytes(self._flags)) if flag]

    @property
    def count(self) -> int:
        return int(self._count.value)

    def state_dict(self) -> dict:
        """The count and the marked items, for a step's checkpoint: a resumed step continues the count instead of
        starting again from what its own process meets (fluxflow/train/step_report.py)."""
        with self._count.get_lock():
            return {"count": int(self._count.value), "marked": self.marked()}

    def load_state_dict(self, state: dict) -> None:
        """Merge a checkpoint's counts into this counter, which may already hold what this process met before the
        resume (the items a dataset skips when it is built, a cache built from the data): the saved marked items are
        marked (each counted once), and the skips without an item (build-time lines, stream samples) are raised to
        the saved number, never added twice."""
        with self._count.get_lock():
            for i in state["marked"]:
                if 0 <= i < len(self._flags) and not self._flags[i]:
                    self._flags[i] = 1
                    self._count.value += 1
            unindexed_now = self._count.value - sum(bytes(self._flags))
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
