"""A table of per-item arrays and captions on disk, written in chunks, resumable, read through memory maps: what the
latent and text caches (latent_cache.py, text_cache.py) are made of.

One directory per cache key:

    meta.json      what the cache was computed from (its key inputs), its row count and each field's shape/dtype
    <field>.npy    one numpy .npy file per field, [rows, *shape], written in place through a memory map
    captions.jsonl one JSON string per written row
    progress.json  {"rows": n, "captions_bytes": b}: rows 0..n-1 and the first b bytes of captions.jsonl are written
                   and flushed; rewritten atomically after every chunk, last, so it never claims unwritten rows
    .lock          held while a process fills the cache: a second one (a sibling branch, a torchrun rank) waits

Why .npy memory maps rather than tar shards: training reads rows in a new random order every epoch, and a memory map
reads any row in O(1) without decoding; the page cache shares it between DataLoader workers and processes; and rows
are written in place, so an interrupted build keeps every chunk it flushed and the next run writes only the rest.
Shards would suit a sequential stream, which the indexed datasets these caches serve are not.

bfloat16 has no numpy dtype: such a field is stored as its raw 16 bits (int16) and viewed back as bfloat16.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock

from fluxflow.checkpoints.io import atomic_write
from fluxflow.runtime.stop_request import StepInterrupted, stop_requested
from fluxflow.train.tracking import batch_progress

STORED_AS = {"float32": np.float32, "float16": np.float16, "bfloat16": np.int16, "bool": np.bool_}


class CacheStore:
    """Open (or create) the cache in `directory` for `meta` (key inputs, rows, fields: {name: [shape, dtype]})."""

    def __init__(self, directory: str | os.PathLike, meta: dict):
        self.dir = Path(directory)
        self.meta = meta
        self.rows = int(meta["rows"])
        self.fields: dict[str, tuple[tuple[int, ...], str]] = {
            name: (tuple(shape), dtype) for name, (shape, dtype) in meta["fields"].items()}
        self._arrays: dict[str, np.ndarray] = {}

    def prepare(self) -> None:
        """Create the empty files, or check that the existing ones were made for this meta (call under `lock()`)."""
        meta, meta_path = self.meta, self.dir / "meta.json"
        if meta_path.exists():
            found = json.loads(meta_path.read_text())
            if found != json.loads(json.dumps(meta)):
                raise ValueError(f"cache {self.dir} was made for other inputs than these (its meta.json differs); "
                                 "move it away")
        else:
            for name, (shape, dtype) in self.fields.items():  # sized once; rows are filled in place later
                np.lib.format.open_memmap(self._path(name), mode="w+", dtype=STORED_AS[dtype],
                                          shape=(self.rows, *shape)).flush()
            atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1).encode()), durable=False)

    def _path(self, name: str) -> Path:
        return self.dir / f"{name}.npy"

    def lock(self) -> FileLock:
        """Blocks until no other process or thread fills this cache (released when the holder dies, too)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(self.dir / ".lock", thread_local=False)

    def progress(self) -> dict:
        try:
            return json.loads((self.dir / "progress.json").read_text())
        except FileNotFoundError:
            return {"rows": 0, "captions_bytes": 0}

    @property
    def rows_done(self) -> int:
        return int(self.progress()["rows"])

    @property
    def complete(self) -> bool:
        return self.rows_done == self.rows

    def writer(self) -> "CacheWriter":
        return CacheWriter(self)

    def array(self, name: str) -> np.ndarray:
        """The whole field, read-only and memory-mapped (opened once per process: DataLoader workers open their own)."""
        if name not in self._arrays:
            self._arrays[name] = np.load(self._path(name), mmap_mode="r")
        return self._arrays[name]

    def read(self, name: str, rows) -> torch.Tensor:
        """Rows of a field as a tensor of the stored dtype (a copy: the memory map stays read-only)."""
        data = torch.from_numpy(np.array(self.array(name)[rows]))
        return data.view(torch.bfloat16) if self.fields[name][1] == "bfloat16" else data

    def captions(self) -> list[str]:
        with open(self.dir / "captions.jsonl", encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def __getstate__(self) -> dict:  # a DataLoader worker reopens the memory maps instead of pickling their data
        return {**self.__dict__, "_arrays": {}}


class CacheWriter:
    """Appends rows at the store's progress mark; `commit()` flushes them and moves the mark (one chunk)."""

    def __init__(self, store: CacheStore):
        self.store = store
        progress = store.progress()
        self.committed, self.next_row = int(progress["rows"]), int(progress["rows"])
        self.maps = {name: np.lib.format.open_memmap(store._path(name), mode="r+") for name in store.fields}
        captions = store.dir / "captions.jsonl"
        captions.touch()
        with open(captions, "r+b") as f:  # drop captions written after the last commit (an interrupted chunk)
            f.truncate(int(progress["captions_bytes"]))
        self.captions = open(captions, "ab")

    def append(self, values: dict[str, torch.Tensor], captions: list[str]) -> None:
        stop = self.next_row + len(captions)
        if stop > self.store.rows:
            raise ValueError(f"cache {self.store.dir}: {stop} rows exceed its {self.store.rows}")
        for name, (_, dtype) in self.store.fields.items():
            value = values[name].detach().cpu()
            value = value.to(getattr(torch, dtype))
            value = value.view(torch.int16) if dtype == "bfloat16" else value
            self.maps[name][self.next_row:stop] = value.numpy()
        self.captions.write("".join(json.dumps(c) + "\n" for c in captions).encode("utf-8"))
        self.next_row = stop

    def commit(self) -> None:
        if self.next_row == self.committed:
            return
        for array in self.maps.values():
            array.flush()
        self.captions.flush()
        progress = {"rows": self.next_row, "captions_bytes": self.captions.tell()}
        atomic_write(self.store.dir / "progress.json", lambda f: f.write(json.dumps(progress).encode()),
                     durable=False)
        self.committed = self.next_row

    def close(self) -> None:
        self.captions.close()
        self.maps.clear()


def fill(store: CacheStore, batches: Iterable[tuple[dict[str, torch.Tensor], list[str]]], *, chunk_rows: int,
         desc: str) -> None:
    """Write `batches` ((values, captions) for the rows from `store.rows_done` on, in order) into the store, moving
    its progress mark every `chunk_rows` rows and at the end. Rows written after the last mark are lost if the build
    stops; a stop request (Ctrl-C, SIGTERM: fluxflow/runtime/stop_request.py) is honoured at a mark."""
    writer = store.writer()
    try:
        with batch_progress(store.rows, writer.committed, desc, unit="item") as bar:
            for values, captions in batches:
                writer.append(values, captions)
                bar.update(len(captions))
                if writer.next_row - writer.committed >= chunk_rows:
                    writer.commit()
                    if stop_requested() and writer.committed < store.rows:
                        raise StepInterrupted(f"{desc}: stopped at {writer.committed}/{store.rows} rows; the next "
                                              "run continues there")
            writer.commit()
    finally:
        writer.close()
