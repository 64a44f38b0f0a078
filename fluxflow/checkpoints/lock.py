"""One run per directory: a second run against the same output fails at once instead of corrupting the first.

`fcntl.flock` on `<dir>/.lock`: the kernel drops the lock when the holder's file descriptor closes, including when
the process is killed (kill -9, OOM), so there is never a stale lock to clean up by hand. The holder's pid is written
into the file so the refusal can say who holds it. The lock file itself is left in place: deleting it on release
would let a third process lock a fresh inode while a second still waits on the old one. POSIX only (fcntl).
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path


class RunLockedError(RuntimeError):
    """Another process (or another RunLock in this one) holds the directory."""


class RunLock:
    """`with RunLock(output_dir): ...` holds `<output_dir>/.lock` exclusively, or raises RunLockedError at once."""

    def __init__(self, output_dir: str | os.PathLike):
        self.directory = Path(output_dir)
        self.path = self.directory / ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        if self._fd is not None:
            raise RuntimeError(f"RunLock on {self.directory} is already held by this object")
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"pid {holder}" if holder else "another process"
            raise RunLockedError(
                f"{self.directory} is in use by another run ({who}, lock file {self.path}); wait for it to finish, "
                "stop it, or choose another output directory"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # no pid left behind that could be mistaken for a live holder
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
