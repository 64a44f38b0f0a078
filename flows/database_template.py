"""New local databases of MLflow and Prefect start as copies of an empty one kept under the user's cache.

Both create a new SQLite database by running their whole chain of schema migrations (MLflow: 1.2-4 s on 2 cores;
Prefect's server: 10-11 s to its first answer with a new database against 3.4-4.5 s with a copy). The schema depends
only on the library's version (pinned in pyproject.toml), so the first database made on a machine is kept, empty, as
a template under the user's cache (`$FLUXFLOW_CACHE_DIR`, else `$XDG_CACHE_HOME/fluxflow`, else `~/.cache/fluxflow`),
named after the library and its version, and later new databases are copies of it (milliseconds). Existing
databases are left alone. flows/mlflow_runs.py (prepare_store) and flows/prefect_app.py use it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import Callable

from fluxflow.storage.location import cache_home


def sqlite_file(url: str | None, prefix: str) -> Path | None:
    """The database file of a SQLite URL starting with `prefix` (None for another URL, an in-memory database or one
    with options)."""
    if not url or not url.startswith(prefix) or "?" in url or url == prefix + ":memory:":
        return None
    return Path(url[len(prefix):])


def template_path(library: str, version: str) -> Path:
    return cache_home() / f"{library}-{version}-empty.db"


def copy_database(source: Path, target: Path, edit: Callable[[str], None] | None = None) -> None:
    """Copy `source` to `target` (then `edit` the copy) through a temporary file and a hard link: a reader sees all
    of it or none, and a database another process created in the meantime is kept (link() replaces nothing)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as a file the library creates (mkstemp makes it private)
        shutil.copyfile(source, tmp)
        if edit:
            edit(tmp)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, target)
    finally:
        os.unlink(tmp)


def keep_as_template(database: Path, template: Path, filled_tables: set[str]) -> bool:
    """Keep a consistent copy of `database` (SQLite's backup: a snapshot, also of a database another process is
    writing, its write-ahead log included) as `template`, when no table other than `filled_tables` has a row: a
    template holds a schema, never a run. Whether it was kept; any failure (a cache that cannot be written, a database
    that cannot be read) keeps nothing and raises nothing."""
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=template.parent) as scratch:
            snapshot = Path(scratch) / template.name
            with contextlib.closing(sqlite3.connect(f"{database.absolute().as_uri()}?mode=ro", uri=True)) as source, \
                    contextlib.closing(sqlite3.connect(snapshot)) as copy:
                source.backup(copy)
                tables = [name for (name,) in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                if any(copy.execute(f'SELECT 1 FROM "{name}" LIMIT 1').fetchone()
                       for name in tables if name not in filled_tables):
                    return False
                copy.execute("PRAGMA journal_mode = DELETE")  # one file: a copy needs no -wal beside it
            copy_database(snapshot, template)
    except (OSError, sqlite3.Error):
        return False
    return template.exists()
