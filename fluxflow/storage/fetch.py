"""A file on an object store, read through a local copy whose sha256 is checked: every remote read goes here.

A checkpoint is read several times (hashed, loaded, its head read on failure): a local copy reads the network once,
and a later read of the same content (a resumed run, a second `fluxflow-generate`) not at all. The expected hash is
the caller's (a CheckpointRef's) or the object's sidecar record (fluxflow/storage/mirror.py); a file with neither
(uploaded by hand, e.g. a `model_checkpoint`) is downloaded afresh every time and loaded as it is.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from fluxflow.storage.location import StorageError, cache_home, local_path, remote_uri
from fluxflow.storage.mirror import download, sha256_of, sidecar_sha256
from fluxflow.storage.store_errors import raise_if_users_to_fix


class TornObjectError(ValueError):
    """The downloaded bytes do not have the sha256 they should."""


def fetch_verified(uri: str, expected_sha256: str | None = None) -> Path:
    """A local copy of the remote file `uri`, checked against `expected_sha256` (else its sidecar record)."""
    import fsspec

    fs, key = fsspec.core.url_to_fs(uri, use_listings_cache=False, **http_timeouts(uri))
    try:
        expected = expected_sha256 or sidecar_sha256(fs, key)
        name = key.rsplit("/", 1)[-1]
        if expected:
            folder = cache_home() / "remote" / expected[:2] / expected
            cached = folder / name
            if cached.exists() and sha256_of(cached) == expected:
                return cached
        else:
            folder = cache_home() / "remote" / "unrecorded" / hashlib.sha256(uri.encode()).hexdigest()[:16]
        actual = download(lambda tmp: fs.get_file(key, tmp), folder / name, expected)
        if actual is not None:
            raise TornObjectError(f"{uri} has sha256 {actual[:16]}…, expected {expected[:16]}…: a torn or "
                                  "unfinished upload, or the object changed after it was referenced")
    except FileNotFoundError:
        if _bucket_missing(fs, uri, key):  # s3fs says only "not found", as for an object the bucket lacks
            bucket = key.split("/", 1)[0]
            raise StorageError(f"{uri}: the bucket {bucket!r} does not exist; create it or correct the URI") from None
        raise
    except Exception as exc:  # a TornObjectError is none of the failures a user must fix: it stands
        raise_if_users_to_fix(uri, exc)
        raise
    return folder / name


def _bucket_missing(fs, uri: str, key: str) -> bool:
    """Whether the bucket of an object-store `uri` (s3://BUCKET/..., gs://, ...; not http) is not there; False when
    that cannot be told."""
    if uri.startswith(("http://", "https://")) or "/" not in key:
        return False
    try:
        return not fs.exists(key.split("/", 1)[0])
    except Exception:  # no access to the bucket itself, a network error: the object's own error stands
        return False


HTTP_READ_TIMEOUT_S = 60


def http_timeouts(uri: str) -> dict:
    """fsspec's options for `uri` (every remote read: here, and fluxflow/checkpoints/io.py). For an http(s) URI: give
    up on a server that accepts the connection but sends nothing for a minute. aiohttp's
    default is 5 minutes for the whole request, for the sidecar and then again for the file, which looked like a
    hang; a whole download is not limited (a large checkpoint over a slow link)."""
    if not uri.startswith(("http://", "https://")):
        return {}
    import aiohttp

    timeout = aiohttp.ClientTimeout(total=None, sock_connect=HTTP_READ_TIMEOUT_S, sock_read=HTTP_READ_TIMEOUT_S)
    return {"client_kwargs": {"timeout": timeout}}


def local_copy(path: str, expected_sha256: str | None = None) -> Path:
    """`path` itself when it is local, else its verified local copy (for callers that need a file: MLflow's
    artifacts of a registered model)."""
    uri = remote_uri(path)
    return fetch_verified(uri, expected_sha256) if uri is not None else local_path(path)
