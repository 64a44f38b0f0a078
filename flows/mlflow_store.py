"""A new local MLflow store starts as a copy of an empty one.

MLflow creates a new SQLite store by running its whole chain of schema migrations: 1.2-4 s on 2 cores, paid by every
first run in a new working directory (the default store is ./mlflow.db). The schema depends only on MLflow's version
(pinned in pyproject.toml), so the first store made on a machine is kept, empty, as a template under the user's cache
(`$FLUXFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/fluxflow`, else `~/.cache/fluxflow`), named after MLflow's version, and
later new stores are copies of it (milliseconds). Existing stores, servers and other databases are left alone.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Callable

from flows import env  # noqa: F401  (must precede mlflow)
from fluxflow.storage.location import cache_home

SQLITE_PREFIX = "sqlite:///"


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for anything else, an in-memory store or one with options)."""
    if not tracking_uri.startswith(SQLITE_PREFIX) or "?" in tracking_uri or tracking_uri == SQLITE_PREFIX + ":memory:":
        return None
    return Path(tracking_uri[len(SQLITE_PREFIX):])


def is_sqlite_database(path: str) -> bool:
    """Whether `path` is a readable regular file that starts as a SQLite database does."""
    if not os.path.isfile(path):  # first: opening a FIFO would wait for a writer
        return False
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def _publish(source: Path, target: Path, edit: Callable[[str], None] | None = None) -> None:
    """Copy `source` to `target` (then `edit` the copy) through a temporary file and a hard link: a reader sees all
    of it or none, and a store another process created in the meantime is kept (link() replaces nothing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as a file MLflow creates (mkstemp makes it private)
        shutil.copyfile(source, tmp)
        if edit:
            edit(tmp)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, target)
    finally:
        os.unlink(tmp)


def prepare_store(tracking_uri: str) -> None:
    """Before the first use of `tracking_uri`: a new SQLite store is copied from the template (made once, here, when
    missing). Any failure leaves the store for MLflow to create as usual."""
    target = sqlite_file(tracking_uri)
    if target is None or target.exists():
        return
    import mlflow

    template = cache_home() / f"mlflow-{mlflow.__version__}-empty.db"
    try:
        if not template.exists():
            with tempfile.TemporaryDirectory() as scratch:
                made = Path(scratch) / "mlflow.db"
                mlflow.tracking.MlflowClient(f"{SQLITE_PREFIX}{made}").search_experiments()  # runs the migrations
                _publish(made, template)
        _publish(template, target, _default_experiment_here)
    except (OSError, sqlite3.Error):
        return


def _default_experiment_here(db: str) -> None:
    """MLflow gives the "Default" experiment (id 0) of a new store its artifact folder under ./mlruns of the process
    that creates the store; the template's points to where the template was made."""
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                           (os.path.join(os.path.abspath("mlruns"), "0"),))
