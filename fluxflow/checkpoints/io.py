"""Checkpoint files: atomic writes, safe loads, content hashes and the immutable final.pt.

A checkpoint is a plain dict in the original tool's layout (docs/ARCHITECTURE.md, "Checkpoint format";
StepRun.checkpoint_state writes it). Why the rules below:
- A crash (kill -9, power loss, full disk) while saving must never cost the last good checkpoint, so every write goes
  to a temp file in the same directory, is flushed and fsynced, then renamed over the target (rename is atomic on
  POSIX) and the directory is fsynced so the rename itself survives a power loss. A checkpoint is also checked after
  the write and before the rename (fluxflow/checkpoints/verify.py), and `keep_previous` moves the checkpoint it
  replaces aside instead of deleting it, for filesystems where a rename is not atomic
  (fluxflow/checkpoints/latest.py).
- A full disk is a `DiskFullError` naming the file and what to do, not torch's opaque RuntimeError (`[enforce fail at
  inline_container.cc:672] . unexpected pos ...`, with the OSError only as its context): so every atomic write goes
  through a `Sink` that remembers the OSError itself.
- Loading never unpickles arbitrary objects (`torch.load(weights_only=True)`): a checkpoint is data, not code. So a
  checkpoint may hold only tensors, dicts, lists, tuples, str, bytes, int, float, bool and None. `save_checkpoint`
  checks that before writing, so an unloadable checkpoint fails at save time, not hours later at resume time.
- Reads accept a local path or any fsspec URI (a `model_checkpoint` or a step's final.pt on s3://, gs://, ...): a
  remote file is read through a local copy checked against its sha256 (fluxflow/storage/fetch.py). Writes are local
  only, because only a local rename is atomic: an output directory on an object store is a local staging mirror that
  the step publishes (fluxflow/storage/mirror.py).
"""
from __future__ import annotations

import collections
import hashlib
import os
from pathlib import Path
from typing import IO, Any

import torch

from fluxflow.checkpoints.atomic_file import atomic_write
from fluxflow.checkpoints.load_errors import describe_load_failure
from fluxflow.checkpoints.verify import verify_torch_zip
from fluxflow.config.file_checks import not_a_regular_file
from fluxflow.errors import CheckpointError, DiskFullError, NonRetryable
from fluxflow.storage.location import local_path, remote_uri

PathLike = str | os.PathLike

_CHUNK = 1 << 20  # 1 MiB: streamed hashing and copying never hold a whole checkpoint in memory


class CheckpointUnreachable(OSError):
    """A remote checkpoint could not be downloaded (its server does not answer, or answers with an error): a network
    error, which a retry may fix, so not a CheckpointError; the message names the checkpoint."""


# ----------------------------------------------------------------------------------------------- local or fsspec

def _local_path(path: PathLike) -> Path | None:
    """The local path behind `path` (a file:// URI is one), or None when it is on an object store."""
    return local_path(path) if remote_uri(path) is None else None


def _open_read(path: PathLike) -> IO[bytes]:
    local = _local_path(path)
    if local is not None:
        return open(local, "rb")
    import fsspec  # only needed for remote URIs

    from fluxflow.storage.fetch import http_timeouts

    fs, inner = fsspec.core.url_to_fs(str(path), **http_timeouts(str(path)))  # the download's timeouts
    return fs.open(inner, "rb")


# ------------------------------------------------------------------------------------------------ save and load

_PLAIN = (str, bytes, int, float, bool, type(None), torch.device, torch.dtype)  # exact types, see _check_loadable
_CONTAINERS = (dict, collections.OrderedDict)
_SEQUENCES = (list, tuple, set, torch.Size)


def _check_loadable(value: Any, where: str) -> None:
    """Raise TypeError naming the first value that `torch.load(weights_only=True)` would refuse.

    Exact type checks on purpose: numpy.float64 *is* a float subclass but pickles as a numpy object that
    weights_only refuses, and a defaultdict pickles its factory function.
    """
    kind = type(value)
    if isinstance(value, torch.Tensor) or kind in _PLAIN:
        return
    if kind in _CONTAINERS:
        for key, item in value.items():
            _check_loadable(key, f"{where} key {key!r}")
            _check_loadable(item, f"{where}[{key!r}]")
        return
    if kind in _SEQUENCES:
        for i, item in enumerate(value):
            _check_loadable(item, f"{where}[{i}]")
        return
    raise TypeError(
        f"{where} is a {kind.__module__}.{kind.__qualname__}; a checkpoint may hold only tensors, dicts, lists, "
        "tuples, str, bytes, int, float, bool and None (it is loaded with torch.load(weights_only=True))"
    )


def save_checkpoint(state: dict[str, Any], path: PathLike, keep_previous: Path | None = None) -> None:
    """Write `state` to the local `path` atomically (temp file, flush, fsync, check, rename, fsync dir); with
    `keep_previous`, the checkpoint it replaces is moved there first (fluxflow/checkpoints/latest.py)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"cannot save checkpoint {path}: state must be a dict, got {type(state).__name__}")
    try:
        _check_loadable(state, "state")
    except TypeError as e:
        raise CheckpointError(f"cannot save checkpoint {path}: {e}") from None
    try:
        atomic_write(path, lambda f: torch.save(state, f), verify=verify_torch_zip, keep_previous=keep_previous)
    except DiskFullError:
        raise
    except (OSError, ValueError) as e:  # ValueError: the written file failed verification
        raise CheckpointError(f"could not write checkpoint {path}: {e}") from e


def load_checkpoint(path: PathLike, expected_sha256: str | None = None) -> dict[str, Any]:
    """Load a checkpoint dict onto the CPU with `torch.load(weights_only=True)`.

    Raises CheckpointError naming the file when it is missing, not a regular file, corrupt or truncated, would run
    code when unpickled (refused), is not a dict, or (with `expected_sha256`, e.g. from a CheckpointRef) has
    different content than expected.
    """
    if _local_path(path) is None:  # a remote file: a local copy, verified (its sha256 is checked there)
        path, expected_sha256 = _fetched(str(path), expected_sha256), None
    if odd := not_a_regular_file(_local_path(path)):  # a FIFO or /dev/zero: reading it would never end
        raise CheckpointError(f"checkpoint {odd}")
    if expected_sha256 is not None:
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint not found: {path}") from None
        if actual != expected_sha256:
            raise CheckpointError(
                f"checkpoint {path} has sha256 {actual[:16]}…, expected {expected_sha256[:16]}…: "
                "the file changed after it was referenced"
            )
    try:
        with _open_read(path) as f:
            state = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as e:  # UnpicklingError (refused), zip reader RuntimeError, EOFError on an empty file, ...
        raise CheckpointError(describe_load_failure(path, e, _head(path))) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint dict")
    return state


def checkpoint_file(path: PathLike) -> Path:
    """The local file of the checkpoint `path`: itself, or for a remote URI its local copy, fetched once (with the
    timeouts of fluxflow/storage/fetch.py); load it and hash it there rather than reading the URI again (an http(s)
    file without a sidecar record is downloaded afresh at every fetch). CheckpointError as in load_checkpoint."""
    local = _local_path(path)
    return local if local is not None else _fetched(str(path), None)


def _fetched(uri: str, expected_sha256: str | None) -> Path:
    from fluxflow.storage.fetch import TornObjectError, fetch_verified

    try:
        return fetch_verified(uri, expected_sha256)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {uri}") from None
    except TornObjectError as exc:
        raise CheckpointError(f"checkpoint {exc}") from None
    except (ValueError, ImportError) as exc:  # fsspec: a protocol it does not know, or whose package is not installed
        raise CheckpointError(f"checkpoint {uri}: {exc}") from None
    except NonRetryable:  # the store's own line, naming the URI (no bucket, no credentials, ...)
        raise
    except Exception as exc:  # no answer, refused connection, HTTP 500: aiohttp's and botocore's own words only
        why = "the server did not answer in time" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
        raise CheckpointUnreachable(f"checkpoint {uri} could not be fetched: {why}") from exc


_HEAD_BYTES = 16 << 20  # enough for the pickles of a legacy-format checkpoint, which come before its storages


def _head(path: PathLike) -> bytes:
    """The first bytes of a file that failed to load, for describe_load_failure to tell a raw pickle apart."""
    try:
        with _open_read(path) as f:
            return f.read(_HEAD_BYTES)
    except OSError:
        return b""


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file's bytes, read in chunks (local path or fsspec URI)."""
    with _open_read(path) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def finalize(latest: PathLike, final: PathLike) -> str:
    """Copy `latest` to `final` atomically and return the sha256 of `final`.

    final.pt is immutable: when it already exists with the same bytes this is a no-op (so a runner that crashed
    right after finalizing can call it again); with different bytes it raises CheckpointError rather than replace a
    checkpoint that later steps may have been trained from. A step that re-runs because its configuration changed
    must move the old final.pt aside first. Only one process writes a given final.pt (the output dir's RunLock), so
    the exists-then-write below does not race.
    """
    if not Path(latest).exists():
        raise CheckpointError(f"cannot finalize: {latest} does not exist")
    if Path(final).exists():
        existing, wanted = sha256_file(final), sha256_file(latest)
        if existing != wanted:
            raise CheckpointError(
                f"refusing to overwrite {final}: it exists with different content (sha256 {existing[:16]}… vs "
                f"{wanted[:16]}… of {latest}); final checkpoints are immutable, move the old one aside to re-run"
            )
        return existing

    digest = hashlib.sha256()

    def copy(out: IO[bytes]) -> None:
        with _open_read(latest) as src:
            while chunk := src.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)

    try:
        atomic_write(final, copy)
    except DiskFullError:
        raise
    except OSError as e:
        raise CheckpointError(f"could not write {final}: {e}") from e
    return digest.hexdigest()
