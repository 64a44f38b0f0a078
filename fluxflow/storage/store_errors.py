"""An object store's failures as one line that says what to do, not botocore's traceback."""
from __future__ import annotations

import os
import socket
from urllib.parse import urlsplit

from fluxflow.errors import error_chain
from fluxflow.storage.location import StorageError


def describe_store_error(uri: str, exc: BaseException) -> str | None:
    """One line for the failures a user must fix (no bucket, no credentials, access denied); None for the others
    (a network error a retry may fix)."""
    name = type(exc).__name__
    text = str(exc)
    bucket = uri.split("://", 1)[-1].split("/")[0]
    if name in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError") or \
            "Unable to locate credentials" in text:
        return (f"{uri}: no credentials for the object store ({text}); set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the equivalent of the store")
    if isinstance(exc, FileNotFoundError) and ("bucket does not exist" in text.lower() or "NoSuchBucket" in text):
        return f"{uri}: the bucket {bucket!r} does not exist ({text}); create it or correct the URI"
    if isinstance(exc, PermissionError):
        return f"{uri}: access denied by the object store ({text}); check the credentials and the bucket's policy"
    return None


def raise_if_users_to_fix(uri: str, exc: BaseException) -> None:
    """StorageError with `describe_store_error`'s line (context dropped: the line says it all), when it has one."""
    line = describe_store_error(uri, exc)
    if line:
        raise StorageError(line) from None


def unreachable(uri: str, exc: BaseException) -> str | None:
    """'cannot reach HOST: REASON' when `exc`'s chain holds a failure to connect (no network, a name that does not
    resolve, a refused connection), else None. fsspec's http filesystem reports one as a FileNotFoundError of the URL
    and botocore as an EndpointConnectionError after its retries, 115 lines of traceback further: the root cause is
    what the user must fix, and no file is missing."""
    causes = list(error_chain(exc))
    root = next((e for e in reversed(causes) if isinstance(e, (socket.gaierror, ConnectionError))), None)
    if root is None:
        return None
    # An object store's URL names a bucket, not the endpoint tried: aiohttp's error names that one
    host = urlsplit(uri).netloc if uri.lower().startswith(("http://", "https://")) else next(
        (f"{e.host}:{e.port}" for e in causes if getattr(e, "host", None) and getattr(e, "port", None)), "the store")
    errno = root.errno if isinstance(root.errno, int) else 0
    reason = os.strerror(errno) if errno > 0 else root.strerror or str(root)  # a gaierror's errno is negative
    return f"cannot reach {host}: {reason}"
