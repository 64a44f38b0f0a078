"""What can go wrong with a cache's files outside the code's control, found before it gives a traceback or worse.

- Damage (`damage`): a file truncated, deleted or overwritten by hand or by a copy cut short. Reading it failed with
  numpy's `mmap length is greater than file size` (or a KeyError for a lost caption) in the middle of the step; it is
  now found when the step opens the cache, and the cache is computed again (store.py, `prepare`). Values changed in
  place (a flipped bit) keep the files' shapes and cannot be told apart from good ones: no checksum is kept, since
  hashing every row would cost a read of the whole cache at every start.
- A full disk (`reserve`): the fields are memory maps, and numpy creates them as sparse files, so a full filesystem
  showed only when a page was written back: SIGBUS, the process gone without a word. Their blocks are allocated
  before any row is written instead, so a full disk is one line that says where and how much.
- A directory that cannot be written (`unusable`): a read-only mount, no permission. A complete cache there is read
  without writing anything (the lock is only taken to fill); one with rows missing cannot be filled there.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fluxflow.errors import FULL_ERRNOS, DiskFullError, NonRetryable
from fluxflow.wording import counted

# A file larger than the process may write (`ulimit -f`) fails like a full disk, and is fixed the same way.
NO_SPACE_ERRNOS = (*FULL_ERRNOS, errno.EFBIG)
WHAT_TO_DO = ("set output.cache_dir to another directory, or `cache_latents: false` / `cache_text: false` to encode "
              "on the fly")


class CacheDirUnusable(NonRetryable, OSError):
    """The cache directory cannot be written (read-only filesystem, no permission) and rows are missing."""


def size_text(n: int) -> str:
    """1.5 KiB, 24.0 MiB, 3.1 GiB: a cache's size as the console says it."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:,.1f} {unit}"
    return f"{n} B"


def unusable(directory: Path, cause: OSError) -> CacheDirUnusable:
    return CacheDirUnusable(f"cache {directory}: cannot write there ({cause.strerror or cause}), and rows this step "
                            f"reads are not computed yet; {WHAT_TO_DO}")


def damage(store) -> str | None:
    """What is wrong with the files of `store` (a CacheStore) whose meta.json says they were made for it, or None when
    they are whole or not made yet. A meta.json made for other inputs is not damage: `prepare` refuses it."""
    meta_path = store.dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        return None  # not made, or its making was cut short before meta.json, which `prepare` writes last
    except (OSError, ValueError) as exc:
        return f"meta.json cannot be read: {exc}"
    if meta != json.loads(json.dumps(store.meta)):
        return None
    for name, (shape, dtype) in store.all_fields().items():
        try:
            array = np.load(store.path(name), mmap_mode="r")
        except (OSError, ValueError, EOFError) as exc:  # missing, truncated, not an .npy file
            return f"{name}.npy cannot be read: {exc}"
        expected = (store.rows, *shape)
        if array.shape != expected or array.dtype != store.stored_dtype(dtype):
            return f"{name}.npy holds {array.dtype} {array.shape}, not {store.stored_dtype(dtype)} {expected}"
    unnamed = set(np.flatnonzero(np.load(store.path("filled"))).tolist()) - set(store.captions())
    if unnamed:
        return (f"{counted(len(unnamed), 'computed row')} {'has' if len(unnamed) == 1 else 'have'} no line in "
                f"captions.jsonl (row {min(unnamed)} first)")
    return None


@contextlib.contextmanager
def space_errors(store) -> Iterator[None]:
    """A full disk (or a file-size limit) met in the block, making the files, reserving their blocks or writing rows,
    is one DiskFullError naming the cache and its size."""
    try:
        yield
    except OSError as exc:
        if exc.errno in NO_SPACE_ERRNOS:
            raise DiskFullError(f"cache {store.dir}: no space for its {size_text(store.nbytes())} ({exc.strerror}); "
                                f"free space there, or {WHAT_TO_DO}") from exc
        raise


def reserve(store) -> None:
    """Allocate every block of the fields' files now, so that a full disk is an error here (under `space_errors`)
    and not a SIGBUS when a written page of the memory map reaches the disk. Blocks already allocated cost nothing."""
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows: sparse files as before
        return
    for name in store.all_fields():
        path = store.path(name)
        try:
            with open(path, "r+b") as f:
                os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a filesystem without fallocate: sparse files
                raise
