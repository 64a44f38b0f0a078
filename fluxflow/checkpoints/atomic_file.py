"""Writing a file so that a crash never leaves it torn: a temp file beside it, flushed and fsynced, renamed over it.

The one way the core writes a file it must not lose half of (checkpoints, ref.json, the metrics JSONL when it is
trimmed, cache metadata, exports, sample images); why each rule is there: fluxflow/checkpoints/io.py. No torch
here: step_files and the trackers, which stay torch-free, write through it too.
"""
from __future__ import annotations

import os
import tempfile
from contextlib import suppress
from pathlib import Path
from typing import IO, Callable

from fluxflow.errors import FULL_ERRNOS, CheckpointError, DiskFullError
from fluxflow.storage.location import local_path, remote_uri


class Sink:
    """The temp file as `write` sees it: counts the bytes written and remembers the OSError of a failed write."""

    def __init__(self, file: IO[bytes]):
        self.file, self.written, self.error = file, 0, None

    def write(self, data) -> int:
        try:
            n = self.file.write(data)
        except OSError as e:
            self.error = e
            raise
        self.written += len(data) if n is None else n
        return n

    def __getattr__(self, name: str):  # flush, tell, seek, fileno...: the real file's
        return getattr(self.file, name)


def _open_temp(fd: int) -> IO[bytes]:
    """The temp file a write goes to (a seam: tests make it fail as a full disk does)."""
    return os.fdopen(fd, "wb")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, durable: bool = True,
                 verify: Callable[[Path, int], None] | None = None, keep_previous: Path | None = None) -> None:
    """Call `write(file)` on a temp file next to `path`, then move it over `path`.

    Readers see either the old file or the complete new one, never a partial one. If `write` raises, the temp file
    is removed and `path` is untouched. `durable=False` skips the fsyncs (sample images: losing one to a power cut
    is harmless, and fsync is slow on network storage). `verify(temp, bytes_written)` checks the written file before
    it replaces anything; with `keep_previous`, the file it replaces is first moved there (when `verify` accepts it).
    A full disk raises DiskFullError.
    """
    local = local_path(path) if remote_uri(path) is None else None
    if local is None:
        raise CheckpointError(f"cannot write {path}: files are written to local or mounted directories only")
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
    sink = None
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a checkpoint on shared storage should be readable by the team
        with _open_temp(fd) as f:
            sink = Sink(f)
            write(sink)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if verify is not None:
            verify(Path(tmp), sink.written)
        if keep_previous is not None and _still_good(local, verify):
            os.replace(local, keep_previous)
        os.replace(tmp, local)
    except BaseException as e:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        # The ENOSPC/EDQUOT behind `e`: raised directly (flush, fsync, close) or remembered by the sink.
        full = next((cause for cause in (e, getattr(sink, "error", None), e.__context__)
                     if isinstance(cause, OSError) and cause.errno in FULL_ERRNOS), None)
        if full is not None:
            raise DiskFullError(f"cannot write {local}: the disk is full ({full.strerror} on the filesystem of "
                                f"{local.parent}); the previous file is intact: free space there, then run the same "
                                "command again") from e
        raise
    if durable:  # the directory too, which makes the rename durable
        with suppress(OSError):  # some filesystems refuse O_RDONLY fsync on a directory; durability there is theirs
            fd = os.open(local.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _still_good(path: Path, verify: Callable[[Path, int], None] | None) -> bool:
    """Whether `path` exists and `verify` (if any) accepts it, to be kept as the previous version (a torn one is
    replaced)."""
    try:
        size = path.stat().st_size  # a missing file raises here
        if verify is not None:
            verify(path, size)
    except Exception:
        return False
    return True
