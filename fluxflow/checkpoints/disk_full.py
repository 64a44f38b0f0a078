"""Telling a full disk apart from other write failures, and saying so in one line.

torch's zip writer turns the OSError of a failed write into an opaque RuntimeError (`[enforce fail at
inline_container.cc:672] . unexpected pos ...`, with the OSError only as its context), so every atomic write goes
through a `Sink` that remembers the OSError itself (fluxflow/checkpoints/io.py, atomic_write).
"""
from __future__ import annotations

from pathlib import Path
from typing import IO

from fluxflow.errors import FULL_ERRNOS, DiskFullError


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


def disk_full_cause(error: BaseException, sink: Sink | None) -> OSError | None:
    """The ENOSPC/EDQUOT behind `error`: raised directly (flush, fsync, close) or remembered by the sink."""
    for candidate in (error, getattr(sink, "error", None), error.__context__):
        if isinstance(candidate, OSError) and candidate.errno in FULL_ERRNOS:
            return candidate
    return None


def disk_full_error(path: Path, cause: OSError) -> DiskFullError:
    return DiskFullError(f"cannot write {path}: the disk is full ({cause.strerror} on the filesystem of "
                         f"{path.parent}); the previous file is intact: free space there, then run the same command "
                         "again")
