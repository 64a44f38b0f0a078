"""A step's files on an object store, mirrored in the local staging directory the step trains in.

Local writes stay as they are (atomic rename, fsync, fluxflow/checkpoints/io.py); this adds the object store's half
of the same guarantees:
- No reader sees a torn object: a file is uploaded to a temporary key, its size checked, then moved to its key (on
  S3 a server-side copy, which replaces the object whole or not at all). Each object has a sidecar `<key>.sha256`
  written after it; a reader downloads, hashes, and uses the object only when the hashes agree. An object without a
  matching sidecar (an upload cut short, a kill between the object and its sidecar) is never used.
- The previous good `latest.pt` survives a failed upload: the new one is complete under a temporary key before
  anything is replaced, and the one it replaces is first copied to `latest.prev.pt` (as locally).
- `ref.json` is published last, after `final.pt`, the metrics and the samples: a reader that finds it finds them.

The store is the truth: `pull` makes the staging copy of a file equal to the store's verified object, or removes it
when the store has none that can be trusted (a staging copy newer than the store is a write that never reached it).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from contextlib import suppress
from pathlib import Path
from typing import Callable

from fluxflow.storage.store_errors import raise_if_users_to_fix

SIDECAR = ".sha256"


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:  # read in chunks: a checkpoint is never held in memory whole
        return hashlib.file_digest(f, "sha256").hexdigest()


def sidecar_sha256(fs, key: str) -> str | None:
    """The sha256 recorded in the sidecar of the object `key` of `fs`; None without one."""
    try:
        return fs.cat_file(key + SIDECAR).decode().strip() or None
    except FileNotFoundError:
        return None


def download(get: Callable[[str], object], local: Path, expected: str | None) -> str | None:
    """`get(temp)` into a temp file beside `local`, moved to `local` when its sha256 is `expected` (always when
    nothing is expected); else `local` is left as it is and the temp file's sha256 returned."""
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".tmp", dir=local.parent)
    os.close(fd)
    try:
        get(tmp)
        actual = sha256_of(Path(tmp)) if expected else None
        if actual != expected:
            return actual
        os.replace(tmp, local)
        return None
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


class OutputMirror:
    """The output `uri` on an object store and its local staging directory `root`; paths are relative to both."""

    def __init__(self, uri: str, root: Path, say: Callable[[str], None] = print):
        import fsspec  # only for remote outputs

        self.uri, self.root, self.say = uri.rstrip("/"), Path(root), say
        # No listings cache: another node (or a killed run) changes the store between two looks.
        self.fs, self.base = fsspec.core.url_to_fs(self.uri, use_listings_cache=False)
        self._sent: dict[str, tuple[int, int]] = {}  # files published by `publish_changed`: (size, mtime_ns)
        # The sha256 of each object this mirror pulled whole or published: only such an object is kept as the
        # previous one when it is replaced (a torn one is simply replaced, as locally: checkpoints/io.py).
        self._known: dict[str, str] = {}

    def url(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}"

    def _call(self, what: str, fn, *args, **kwargs):
        """`fn(*args)`; a failure the user must fix becomes a StorageError of one line."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise_if_users_to_fix(self.uri, exc)
            if isinstance(exc, FileNotFoundError):
                raise
            raise OSError(f"{what} {self.uri}: {type(exc).__name__}: {exc}") from exc

    def recorded_sha256(self, rel: str) -> str | None:
        """The sha256 the sidecar records for `rel`; None without one."""
        return self._call("reading", sidecar_sha256, self.fs, self._key(rel))

    def exists(self, rel: str) -> bool:
        return bool(self._call("checking", self.fs.exists, self._key(rel)))

    # ------------------------------------------------------------------------------------------------ reading

    def pull(self, rel: str) -> bool:
        """Make the staging copy of `rel` the store's object, verified; True when there is one. An object whose bytes
        do not match its sidecar is not used (a line says so) and the staging copy is removed."""
        local = self.root / rel
        expected = self.recorded_sha256(rel)
        self._known.pop(rel, None)
        if expected is None or not self.exists(rel):
            if self.exists(rel):
                self.say(f"{self.url(rel)} has no {SIDECAR} record (an upload that did not finish): not used")
            local.unlink(missing_ok=True)
            return False
        if not (local.exists() and sha256_of(local) == expected):
            actual = download(lambda tmp: self._call("downloading", self.fs.get_file, self._key(rel), tmp), local,
                              expected)
            if actual is not None:
                self.say(f"{self.url(rel)} has sha256 {actual[:16]}…, its record says {expected[:16]}… (a torn or "
                         "unfinished upload): not used")
                local.unlink(missing_ok=True)
                return False
        self._known[rel] = expected
        return True

    # ------------------------------------------------------------------------------------------------ writing

    def publish(self, rel: str, keep_previous: str | None = None) -> str:
        """Upload the staging file `rel` so that no reader sees it torn; returns its sha256. With `keep_previous`,
        the object it replaces is first copied there (with its record). An object already holding these bytes is
        left as it is when this mirror saw it whole (final.pt is immutable; a retry re-publishes nothing)."""
        local = self.root / rel
        digest = sha256_of(local)
        key = self._key(rel)
        if self._known.get(rel) == digest and self.recorded_sha256(rel) == digest:  # verified whole, same bytes
            return digest
        temp = f"{key}.upload-{uuid.uuid4().hex[:12]}"
        try:
            self._call("uploading to", self.fs.put_file, str(local), temp)
            size, stored = local.stat().st_size, self._call("checking", self.fs.info, temp)["size"]
            if stored != size:
                raise OSError(f"upload of {local} to {self.url(rel)} stored {stored} of {size} bytes")
            current = self.recorded_sha256(rel)
            if keep_previous is not None and current is not None and self._known.get(rel) == current:
                # Object first, then its record: a kill between them leaves a previous that is not trusted, and the
                # current one, still in place, is.
                self._call("copying", self.fs.copy, key, self._key(keep_previous))
                self._call("copying", self.fs.copy, key + SIDECAR, self._key(keep_previous) + SIDECAR)
            self._call("publishing", self.fs.mv, temp, key)
        finally:
            with suppress(Exception):
                if self.fs.exists(temp):
                    self.fs.rm_file(temp)
        # Record last: until it is written the object does not match the old record, and is not used.
        self._call("publishing", self.fs.pipe_file, key + SIDECAR, digest.encode())
        self._known[rel] = digest
        return digest

    def publish_changed(self, rel_dir: str, match: Callable[[str], bool] = lambda name: True) -> None:
        """Upload the files of the staging folder `rel_dir` (those whose names `match`) that are new or changed since
        this mirror last published them (samples: each written once)."""
        folder = self.root / rel_dir
        if not folder.is_dir():
            return
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.name.startswith(".") or not match(path.name):
                continue
            rel = f"{rel_dir}/{path.name}"
            stat = path.stat()
            if self._sent.get(rel) != (stat.st_size, stat.st_mtime_ns):
                self.publish(rel)
                self._sent[rel] = (stat.st_size, stat.st_mtime_ns)

    def remove_unfinished_uploads(self, rel_dir: str, prefix: str = "") -> list[str]:
        """Delete the temporary objects that killed uploads left in `rel_dir` (names starting with `prefix`): each may
        be as large as a checkpoint. Only the step that owns those names may call this (no upload of its is running)."""
        try:
            keys = self._call("listing", self.fs.ls, self._key(rel_dir), detail=False)
        except FileNotFoundError:
            return []
        left = [key for key in keys if ".upload-" in key.rsplit("/", 1)[-1]
                and key.rsplit("/", 1)[-1].startswith(prefix)]
        for key in left:
            with suppress(FileNotFoundError):
                self._call("deleting", self.fs.rm_file, key)
        return left

    def remove(self, rel: str) -> None:
        """Delete `rel` and its record from the store (record first: what is left is never trusted)."""
        for key in (self._key(rel) + SIDECAR, self._key(rel)):
            with suppress(FileNotFoundError):
                self._call("deleting", self.fs.rm_file, key)

    def move(self, rel: str, target: str) -> None:
        """Move `rel` and its record to `target` on the store, when it is there (files set aside, never deleted)."""
        if not self.exists(rel):
            return
        self._call("moving", self.fs.copy, self._key(rel), self._key(target))
        if self.recorded_sha256(rel) is not None:
            self._call("moving", self.fs.copy, self._key(rel) + SIDECAR, self._key(target) + SIDECAR)
        self.remove(rel)
