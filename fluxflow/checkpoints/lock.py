"""One run per directory: a second run against the same output fails at once instead of corrupting the first.

A `filelock.FileLock` (flock on POSIX) on `<dir>/.lock`: the kernel drops the lock when the holder's file descriptor
closes, including when the process is killed (kill -9, OOM), so there is never a stale lock to clean up by hand. The
holder's pid is written into the file so the refusal can say who holds it. The lock file stays in place on release
(filelock keeps it, so that waiters share one inode).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Self

from filelock import FileLock, Timeout

from fluxflow.errors import NonRetryable


class RunLockedError(NonRetryable, RuntimeError):
    """Another process (or another RunLock in this one) holds the directory: a retry finds it held until that run
    ends, so the run is refused in one line (exit 2 from fluxflow-train; a deployment run's log without a
    traceback)."""


class OutputDirUnusable(NonRetryable, OSError):
    """The output directory cannot be created or written (read-only filesystem, no permission, a file in its
    place): the user's setting, not a failure a retry fixes."""


class HeldLock:
    """`with lock: ...`: acquire, and release on the way out (RunLock here, StoreLock in fluxflow/storage)."""

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class RunLock(HeldLock):
    """`with RunLock(output_dir): ...` holds `<output_dir>/.lock` exclusively, or raises RunLockedError at once."""

    def __init__(self, output_dir: str | os.PathLike):
        self.directory = Path(output_dir)
        self.path = self.directory / ".lock"
        # thread_local=False: the lock belongs to this object, whichever thread releases it.
        self._lock = FileLock(self.path, timeout=0, mode=0o644, thread_local=False)

    def acquire(self) -> None:
        if self._lock.is_locked:
            raise RuntimeError(f"RunLock on {self.directory} is already held by this object")
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except Timeout:  # first: filelock's Timeout is an OSError too
            try:
                holder = int(self.path.read_text().strip() or 0)  # the pid the holder wrote; 0: none yet
            except (OSError, ValueError):
                holder = 0
            who = f"pid {holder}" if holder else "another process"
            raise RunLockedError(
                f"{self.directory} is in use by another run ({who}, lock file {self.path}); wait for it to finish, "
                "stop it, or choose another output directory"
            ) from None
        except OSError as exc:
            reason = exc.strerror or str(exc)
            if isinstance(exc, FileExistsError) or (self.directory.exists() and not self.directory.is_dir()):
                reason = "it is a file, not a folder"
            elif isinstance(exc, NotADirectoryError):
                reason = "a file stands where one of its parent folders should be"
            raise OutputDirUnusable(f"output directory {self.directory}: cannot use it ({reason}); choose another "
                                    "with --output-dir or output.output_path") from None
        # Through a descriptor of its own: closing it leaves the lock (held by filelock's descriptor) in place.
        self.path.write_text(f"{os.getpid()}\n")

    def release(self) -> None:
        if not self._lock.is_locked:
            return
        try:
            self.path.write_text("")  # no pid left behind that could be mistaken for a live holder
        finally:
            self._lock.release()
