"""A new local MLflow store starts as a copy of an empty one (flows/database_template.py): MLflow's migrations take
1.2-4 s on 2 cores, paid by every first run in a new working directory (the default store is ./mlflow.db).
"""
from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
from pathlib import Path

from flows import env  # noqa: F401  (must precede mlflow)
from flows.database_template import copy_database, sqlite_file, template_path

SQLITE_PREFIX = "sqlite:///"  # MLflow's SQLite tracking URIs


def is_sqlite_database(path: str) -> bool:
    """Whether `path` is a readable regular file that starts as a SQLite database does."""
    if not os.path.isfile(path):  # first: opening a FIFO would wait for a writer
        return False
    try:
        with open(path, "rb") as f:
            return f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return False


def foreign_database(path: Path) -> str | None:
    """Why the existing SQLite file at `path` is not an MLflow store to open (it holds tables, none of them MLflow's),
    or None: MLflow runs its migrations on any database it opens, so naming another program's file as the store
    added MLflow's 60-odd tables to it, even for commands that only read."""
    if not is_sqlite_database(str(path)):
        return None  # empty, or not SQLite: MLflow's own error says so
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error:
        return None
    if tables and not tables & {"experiments", "alembic_version"}:
        return f"{path} is a SQLite database of another program (its tables: {', '.join(sorted(tables)[:3])}" \
               f"{', ...' if len(tables) > 3 else ''}), not an MLflow store; it was left as it is"
    return None


def prepare_store(tracking_uri: str) -> None:
    """Before the first use of `tracking_uri`: a new SQLite store is copied from the template (made once, here, when
    missing). Any failure leaves the store for MLflow to create as usual."""
    target = sqlite_file(tracking_uri, SQLITE_PREFIX)
    if target is None or target.exists():
        return
    import mlflow

    template = template_path("mlflow", mlflow.__version__)
    try:
        if not template.exists():
            with tempfile.TemporaryDirectory() as scratch:
                made = Path(scratch) / "mlflow.db"
                mlflow.tracking.MlflowClient(f"{SQLITE_PREFIX}{made}").search_experiments()  # runs the migrations
                copy_database(made, template)
        copy_database(template, target, _default_experiment_here)
    except (OSError, sqlite3.Error):
        return


def _default_experiment_here(db: str) -> None:
    """MLflow gives the "Default" experiment (id 0) of a new store its artifact folder under ./mlruns of the process
    that creates the store; the template's points to where the template was made."""
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                           (os.path.join(os.path.abspath("mlruns"), "0"),))
