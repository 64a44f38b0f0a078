"""Where a run's output lives: a local directory, or an fsspec URI whose files are mirrored in a local staging dir.

The training core writes only local files: atomic renames, flock, appends to a JSONL file are local operations an
object store does not offer. An output on an object store is therefore a local staging directory, keyed by the URI,
that each step mirrors to the store (fluxflow/storage/mirror.py). `file://` is a path: a directory every node mounts
(NFS) is written directly, as today. This module checks a URI without touching the network (config validation);
what only the store can answer (does the bucket exist, are there credentials) is asked at the run's start
(fluxflow/storage/store_lock.py).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from fluxflow.errors import NonRetryable

# Filesystems that live in one process or one machine: a run there would lose its output, or other nodes not see it.
NOT_SHARED = ("memory", "local", "tmp", "simplecache", "filecache", "blockcache", "cached")


class StorageError(NonRetryable, OSError):
    """The output's object store cannot be used as asked (no bucket, no credentials, ...): one line saying why."""


def remote_uri(path: str | os.PathLike | None) -> str | None:
    """`path` without a trailing slash when it is on an object store (s3://, gs://, ...); None for a local path or a
    file:// URI."""
    if path is None or isinstance(path, os.PathLike):
        return None
    text = str(path)
    if "://" not in text or text.lower().startswith("file://"):
        return None
    scheme, _, rest = text.partition("://")  # `s3://` alone keeps its `://` (it names no bucket)
    return f"{scheme}://{rest.rstrip('/')}"


def local_path(path: str | os.PathLike) -> Path:
    """A local path or file:// URI as a Path (not for remote URIs)."""
    text = str(path)
    return Path(text[len("file://"):]) if text.lower().startswith("file://") else Path(text)


def check_output_uri(value: str) -> str:
    """`value` when it can be an output directory; ValueError with one line otherwise. No network: the protocol is
    known to fsspec, its package is installed, and the URI names a bucket."""
    if not value.strip():  # as `--output-dir ""` is: the run's folders landed in the working directory
        raise ValueError("is empty: name the run's folder (e.g. outputs/run; . for the working directory)")
    uri = remote_uri(value)
    if uri is None:
        return value
    from fsspec.registry import known_implementations  # light: no filesystem package is imported

    protocol, _, rest = uri.partition("://")
    protocol = protocol.lower()
    known = known_implementations.get(protocol)
    if known is None:
        raise ValueError(f"unknown storage protocol {protocol}:// (fsspec knows s3://, gs://, az://, ... "
                         "and file:// for a mounted directory)")
    if protocol in NOT_SHARED:
        raise ValueError(f"{protocol}:// is not storage other processes and nodes see; use a directory, "
                         "file://, or an object store such as s3://")
    package = known["class"].split(".")[0]
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"{protocol}:// needs the package {package}, which is not installed "
                         f"({known.get('err') or f'pip install {package}'})")
    if not rest.split("/")[0]:
        raise ValueError(f"the URI names no bucket ({protocol}://BUCKET/PATH)")
    return value


def cache_home() -> Path:
    """FluxFlow's cache folder: `$FLUXFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/fluxflow`, else `~/.cache/fluxflow`."""
    default = Path(os.getenv("XDG_CACHE_HOME", Path.home() / ".cache")) / "fluxflow"
    return Path(os.getenv("FLUXFLOW_CACHE_DIR", default))


def output_root(config) -> Path:
    """The local directory a run reads and writes for `config.output.output_path`."""
    return local_root(config.output.output_path)


def local_root(output_path: str | os.PathLike) -> Path:
    """The path itself, or the local mirror of an output on an object store: one per URI and machine, reused by later
    runs (a resume on the same node downloads only what changed)."""
    uri = remote_uri(output_path)  # without a trailing slash
    if uri is None:
        return local_path(output_path)
    name = uri.rsplit("/", 1)[-1] or "output"
    return cache_home() / "staging" / f"{hashlib.sha256(uri.encode()).hexdigest()[:16]}-{name}"
