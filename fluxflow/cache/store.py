"""A table of per-item arrays and captions on disk, filled in chunks, resumable, read through memory maps: what the
latent and text caches (latent_cache.py, text_cache.py) are made of.

One directory per cache key:

    meta.json      what the cache was computed from (its key inputs), its row count and each field's shape/dtype
    <field>.npy    one numpy .npy file per field, [rows, *shape], written in place through a memory map
    filled.npy     bool [rows], the progress marker: a row is marked only after its values were written and flushed
    captions.jsonl one `[row, caption]` line per written row (the last line of a row wins)
    unreadable.jsonl one `[item, reason]` line per item that was met unreadable while rows were computed (its row
                   holds its stand-in's values): a step that reuses the cache counts them as one that built it does
    used_by.jsonl  one line per step that opened the cache (UTC time, output_path, step name): which runs use it
    .lock          held while a process fills the cache: a second one (a sibling branch, a torchrun rank) waits

Rows are filled on demand: a step asks for the rows it will read (fluxflow/train/step_cache.py), the missing ones are
computed, and a later step or run that reads more rows adds them. An interrupted fill keeps every chunk it marked, so
the next run computes only the rest.

Why .npy memory maps rather than tar shards: training reads rows in a new random order every epoch, and a memory map
reads any row in O(1) without decoding; the page cache shares it between DataLoader workers and processes; and rows
are written in place, in any order. Shards would suit a sequential stream, which the indexed datasets these caches
serve are not. bfloat16 has no numpy dtype: such a field is stored as its raw 16 bits (int16) and viewed back.
"""
from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from fluxflow.cache.health import damage, reserve, space_errors, unusable
from fluxflow.checkpoints.atomic_file import atomic_write
from fluxflow.runtime.stop_request import StepInterrupted, stop_requested
from fluxflow.progress_bar import batch_progress

STORED_AS = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16, "bool": np.bool_}


class CacheStore:
    """The cache in `directory` for `meta` (key inputs, rows, fields: {name: [shape, dtype]})."""

    def __init__(self, directory: str | os.PathLike, meta: dict):
        self.dir = Path(directory)
        self.meta = meta
        self.rows = int(meta["rows"])
        self.fields: dict[str, tuple[tuple[int, ...], str]] = {
            name: (tuple(shape), dtype) for name, (shape, dtype) in meta["fields"].items()}
        self._arrays: dict[str, np.ndarray] = {}

    def prepare(self) -> None:
        """Create the empty files, or check that the existing ones were made for this meta (call under `lock()`).
        Files that are damaged (health.py) or whose making was cut short are made again, empty."""
        meta, meta_path = self.meta, self.dir / "meta.json"
        if meta_path.exists() and damage(self) is None:
            if json.loads(meta_path.read_text()) != json.loads(json.dumps(meta)):
                raise ValueError(f"cache {self.dir} was made for other inputs than these (its meta.json differs); "
                                 "move it away")
            return
        # New files, not the old ones truncated: a process still reading the old ones keeps its memory maps whole.
        for path in [meta_path, self.dir / "captions.jsonl", self.dir / "unreadable.jsonl",
                     *map(self.path, self.all_fields())]:
            path.unlink(missing_ok=True)
        for name, (shape, dtype) in self.all_fields().items():  # sized once, filled later
            np.lib.format.open_memmap(self.path(name), mode="w+", dtype=self.stored_dtype(dtype),
                                      shape=(self.rows, *shape)).flush()
        atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()), durable=False)

    def all_fields(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """The fields and the progress marker, each a file."""
        return {**self.fields, "filled": ((), "bool")}

    @staticmethod
    def stored_dtype(dtype: str) -> np.dtype:
        return np.dtype(STORED_AS[dtype])

    def nbytes(self) -> int:
        """The size of the cache's files when made (all rows, whether computed or not), headers aside."""
        return sum(self.rows * int(np.prod(shape)) * self.stored_dtype(dtype).itemsize
                   for shape, dtype in self.all_fields().values())

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.npy"

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Blocks until no other process or thread fills this cache (released when the holder dies, too). A directory
        that cannot be written is one line (health.py: unusable), not a traceback."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(self.dir / ".lock", thread_local=False)
            lock.acquire()
        except OSError as exc:
            raise unusable(self.dir, exc) from exc
        try:
            yield
        finally:
            lock.release()

    def filled(self) -> np.ndarray:
        """bool [rows]: which rows hold values (read now: another process may be filling). No row counts as computed
        before meta.json exists: until then the files may be half made (prepare writes meta.json last)."""
        if not (self.dir / "meta.json").exists():
            return np.zeros(self.rows, dtype=bool)
        return np.load(self.path("filled"))

    def missing(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Those of `rows` (default: all) that hold no values yet, ascending."""
        empty = ~self.filled()
        if rows is None:
            return np.flatnonzero(empty)
        wanted = np.unique(rows)
        return wanted[empty[wanted]]

    def array(self, name: str) -> np.ndarray:
        """The whole field, read-only and memory-mapped (opened once per process: DataLoader workers open their own)."""
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path(name), mmap_mode="r")
        return self._arrays[name]

    def read(self, name: str, rows) -> torch.Tensor:
        """Rows of a field as a tensor of the stored dtype (a copy: the memory map stays read-only)."""
        data = torch.from_numpy(np.array(self.array(name)[rows]))
        return data.view(torch.bfloat16) if self.fields[name][1] == "bfloat16" else data

    def note_use(self, output: str, step: str) -> None:
        """Append who read the cache (UTC time, the run's output, the step) to `used_by.jsonl`, so that a user who
        shares `cache_dir` between runs can tell which directories belong to runs they deleted or have not used for
        long. One short line appended in one write: lines of concurrent users do not interleave. A read-only cache
        directory is read without it."""
        entry = {"time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "output": output, "step": step}
        line = (json.dumps(entry) + "\n").encode("utf-8")
        with contextlib.suppress(OSError):  # read-only, or a full disk: the record is a convenience, training goes on
            fd = os.open(self.dir / "used_by.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line)
            finally:  # an interrupt too
                os.close(fd)

    def captions(self) -> dict[int, str]:
        """{row: caption} of the written rows (a line cut short by a killed process is not one of them)."""
        return {int(row): caption for row, caption in _jsonl_pairs(self.dir / "captions.jsonl")}

    def unreadable(self) -> dict[int, str]:
        """{item: reason} of the items recorded unreadable (`record_unreadable`)."""
        return {int(item): reason for item, reason in _jsonl_pairs(self.dir / "unreadable.jsonl")}

    def record_unreadable(self, found: dict[int, str]) -> None:
        """Append those of `found` ({item: reason}) not recorded yet (call under `lock()`: while filling)."""
        recorded = self.unreadable()  # read once: per item found, it made a second build quadratic (38 s for 8,000)
        new = {i: reason for i, reason in found.items() if i not in recorded}
        if new:
            with open(self.dir / "unreadable.jsonl", "ab") as f:
                f.write("".join(json.dumps([int(i), r]) + "\n" for i, r in sorted(new.items())).encode("utf-8"))

    def __getstate__(self) -> dict:  # a DataLoader worker reopens the memory maps instead of pickling their data
        return {**self.__dict__, "_arrays": {}}


def _jsonl_pairs(path: Path) -> Iterator[tuple]:
    """The `[a, b]` lines of `path` (none when it does not exist; a line cut short by a killed process is left out)."""
    for line in path.read_text(encoding="utf-8").splitlines() if path.exists() else ():
        try:
            a, b = json.loads(line)
        except ValueError:
            continue
        yield a, b


class CacheWriter:
    """Writes rows in place; `commit()` flushes them and only then marks them filled (one chunk)."""

    def __init__(self, store: CacheStore):
        self.store, self.pending = store, []
        self.maps = {name: np.lib.format.open_memmap(store.path(name), mode="r+") for name in store.all_fields()}
        self.captions = open(store.dir / "captions.jsonl", "ab")

    def write(self, rows: np.ndarray, values: dict[str, torch.Tensor], captions: list[str]) -> None:
        for name, (_, dtype) in self.store.fields.items():
            value = values[name].detach().cpu().to(getattr(torch, dtype))
            self.maps[name][rows] = (value.view(torch.int16) if dtype == "bfloat16" else value).numpy()
        self.captions.write("".join(json.dumps([int(r), c]) + "\n" for r, c in zip(rows, captions)).encode("utf-8"))
        self.pending.extend(int(r) for r in rows)

    def commit(self) -> None:
        if not self.pending:
            return
        for name in self.store.fields:
            self.maps[name].flush()
        self.captions.flush()
        self.maps["filled"][self.pending] = True
        self.maps["filled"].flush()
        self.pending = []

    def close(self) -> None:
        self.captions.close()
        self.maps.clear()


Batches = Iterable[tuple[np.ndarray, dict[str, torch.Tensor], list[str]]]  # (rows, values, captions)


def fill(store: CacheStore, rows: np.ndarray | None, batches: Callable[[np.ndarray], Batches], *, chunk_rows: int,
         desc: str) -> int:
    """Fill those of `rows` (None: all) that hold nothing yet with `batches(missing)`, marking them filled every
    `chunk_rows` rows and at the end. Holds the store's lock: a second filler of the same rows waits, then finds them
    filled. Rows written after the last mark are computed again if the fill stops; a stop request (Ctrl-C, SIGTERM:
    fluxflow/runtime/stop_request.py) is honoured at a mark. Returns how many rows it computed: 0 when another
    process computed them while this one waited for the lock."""
    # space_errors: making the files, reserving their blocks, and captions.jsonl, which grows as rows are written
    with store.lock(), space_errors(store):
        store.prepare()
        missing = store.missing(rows)
        if missing.size == 0:
            return 0
        reserve(store)
        writer, done, total = CacheWriter(store), 0, missing.size
        try:
            with batch_progress(total, 0, desc, unit="item") as bar:
                for written, values, captions in batches(missing):
                    writer.write(written, values, captions)
                    bar.update(len(written))
                    if len(writer.pending) >= chunk_rows:
                        done += len(writer.pending)
                        writer.commit()
                        if stop_requested() and done < total:
                            raise StepInterrupted(f"{desc}: stopped after {done}/{total} rows; the next run continues")
                writer.commit()
        finally:
            writer.close()
    return total
