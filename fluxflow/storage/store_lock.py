"""One run per output directory on an object store: a lock object made with a conditional create.

`<uri>/.lock` is written with `If-None-Match: *` (s3fs `mode="create"`): of two runs that start together exactly one
creates it, the other is refused with who holds it. Unlike a local flock, nothing removes the object when its holder
is killed, so the holder renews a heartbeat in it, and a lock is stale (taken over, saying so) when its holder is a
dead process of this host, or its heartbeat is older than LEASE_S. The takeover replaces the object only if it is
still the stale one (`If-Match` on its ETag), so two runs taking over together cannot both win.

Where the store offers no atomic conditional create (fsspec's generic one checks, then writes), a line says so: a
second run started at the same moment might then not be refused.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from typing import Callable

from fluxflow.checkpoints.lock import HeldLock, RunLock, RunLockedError
from fluxflow.storage.location import StorageError, local_path, remote_uri
from fluxflow.storage.store_errors import describe_store_error, raise_if_users_to_fix

LOCK_NAME = ".lock"
LEASE_S = 180.0  # a heartbeat older than this: the holder is gone (3 missed renewals)
HEARTBEAT_S = 60.0
ATOMIC_CREATE = ("s3", "s3a")  # conditional create (If-None-Match) and replace (If-Match), tried against moto's S3
_WARNED: set[str] = set()


class StoreLock(HeldLock):
    """`with StoreLock(uri): ...` holds `<uri>/.lock`, or raises RunLockedError (held) / StorageError (no bucket,
    no credentials) at once."""

    def __init__(self, uri: str, say: Callable[[str], None] = print):
        import fsspec

        self.uri = uri.rstrip("/")
        self.fs, base = fsspec.core.url_to_fs(self.uri, use_listings_cache=False)
        self.key, self.url = f"{base}/{LOCK_NAME}", f"{self.uri}/{LOCK_NAME}"
        self.protocol = self.uri.split("://", 1)[0].lower()
        self.atomic = self.protocol in ATOMIC_CREATE
        self.say = say
        self.token = uuid.uuid4().hex
        self._etag: str | None = None
        self._stop: threading.Event | None = None

    def _record(self) -> bytes:
        return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                           "heartbeat": time.time()}).encode()

    def acquire(self) -> None:
        if self._stop is not None:
            raise RuntimeError(f"StoreLock on {self.uri} is already held by this object")
        if not self.atomic and self.uri not in _WARNED:  # once per process (the CLI's early check, then the flow)
            _WARNED.add(self.uri)
            self.say(f"⚠️  {self.protocol}:// offers no atomic conditional create here: {self.url} is checked, then "
                     "written, so a second run started at the same moment might not be refused")
        try:
            self._write(mode="create")
        except FileExistsError:
            self._take_over_if_stale()
        except Exception as exc:  # the store's own (fsspec's) errors: `_write` raises no StorageError
            line = describe_store_error(self.uri, exc)
            raise StorageError(line or f"cannot lock {self.url}: {type(exc).__name__}: {exc}") from None
        self._stop = threading.Event()
        threading.Thread(target=self._beat, args=(self._stop,), name="fluxflow-store-lock", daemon=True).start()

    def _write(self, **kwargs) -> None:
        """This holder's record into the lock object; its ETag from the store's answer, else asked for."""
        out = self.fs.pipe_file(self.key, self._record(), **kwargs)
        self._etag = (out.get("ETag") if isinstance(out, dict) else None) or self._info_etag()

    def _info_etag(self) -> str | None:
        try:
            return self.fs.info(self.key).get("ETag")
        except Exception:
            return None

    def _take_over_if_stale(self) -> None:
        etag = self._info_etag()
        holder = _read(self.fs, self.key)
        why = stale_reason(holder)
        if why is None:
            raise RunLockedError(f"{self.uri} is in use by another run ({describe(holder)}, lock object {self.url}); "
                                 "wait for it to finish, stop it, or choose another output directory")
        try:
            if self.atomic and etag:
                self._write(IfMatch=etag)  # only if still the stale one
            else:
                self.fs.rm_file(self.key)
                self._write(mode="create")
        except (FileExistsError, OSError) as exc:
            raise_if_users_to_fix(self.uri, exc)
            raise RunLockedError(f"{self.uri} was taken by another run while this one replaced its stale lock "
                                 f"({self.url})") from None
        self.say(f"Took over the lock {self.url}: {why}")

    def _beat(self, stop: threading.Event) -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                extra = {"IfMatch": self._etag} if self.atomic and self._etag else {}
                self._write(**extra)
            except Exception as exc:  # a blink of the store: the next beat tries again, well within the lease
                self.say(f"⚠️  could not renew the lock {self.url}: {type(exc).__name__}: {exc}")

    def release(self) -> None:
        if self._stop is None:
            return
        self._stop.set()
        self._stop = None
        try:
            holder = _read(self.fs, self.key)
            if holder is not None and holder.get("token") == self.token:  # never delete another run's lock
                self.fs.rm_file(self.key)
        except Exception as exc:
            self.say(f"⚠️  could not remove the lock {self.url} ({type(exc).__name__}: {exc}); the next run takes it "
                     f"over once its heartbeat is older than {LEASE_S:.0f} s")


def _read(fs, key: str) -> dict | None:
    try:
        return json.loads(fs.cat_file(key))
    except FileNotFoundError:
        return None
    except (ValueError, OSError):
        return {}


def stale_reason(holder: dict | None) -> str | None:
    """Why the lock `holder` wrote is no longer held; None while it is."""
    if holder is None:
        return "it was released"
    if not holder:
        return "it was unreadable"
    age = time.time() - float(holder.get("heartbeat", 0))
    if holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", 0))):
        return f"its holder, pid {holder.get('pid')} of this host, is no longer running"
    if age > LEASE_S:
        return f"its holder ({describe(holder)}) last renewed it {age:.0f} s ago"
    return None


def describe(holder: dict | None) -> str:
    if not holder:
        return "unknown holder"
    return f"pid {holder.get('pid')} on {holder.get('host')}"


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def output_lock(output_path, say: Callable[[str], None] = print):
    """The lock of an output directory: a local flock (fluxflow/checkpoints/lock.py) or the store's lock object."""
    uri = remote_uri(output_path)
    return StoreLock(uri, say) if uri is not None else RunLock(local_path(output_path))
