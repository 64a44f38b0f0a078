"""New MLflow and Prefect databases start as copies of an empty one (flows/database_template.py): what a template may
hold, and the temporary Prefect server's new database made, kept and copied (flows/prefect_app.py)."""
from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from flows.database_template import keep_as_template, template_path
from flows.prefect_app import TEMPLATE_TABLES
from flows.prefect_server import TemporaryServer


def _database(path: Path, rows: dict[str, int]) -> Path:
    """A WAL database with tables `rows` (name -> how many rows), the rows still in its write-ahead log."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA wal_autocheckpoint = 0")
    for name, n in rows.items():
        db.execute(f'CREATE TABLE "{name}" (id INTEGER)')
        db.executemany(f'INSERT INTO "{name}" VALUES (?)', [(i,) for i in range(n)])
    db.commit()
    return path  # left open: its log is not folded back into the file


def test_a_schema_with_its_registry_is_kept_whole_and_one_with_a_run_is_not(tmp_path):
    kept = tmp_path / "cache" / "kept.db"
    made = _database(tmp_path / "schema.db", {"alembic_version": 1, "block_type": 3, "flow_run": 0})
    assert keep_as_template(made, kept, {"alembic_version", "block_type"})
    with sqlite3.connect(kept) as copy:
        assert copy.execute("SELECT count(*) FROM block_type").fetchone() == (3,)  # the rows only the log held
        assert copy.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # one file, no -wal to copy beside it

    used = _database(tmp_path / "used.db", {"alembic_version": 1, "block_type": 3, "flow_run": 1})
    refused = kept.with_name("refused.db")
    assert not keep_as_template(used, refused, {"alembic_version", "block_type"})
    assert not refused.exists()
    assert not keep_as_template(tmp_path / "missing.db", refused, {"block_type"})
    # A cache that cannot be written: nothing kept and nothing raised (the server that asked starts as it would).
    (tmp_path / "a-file").write_text("")
    assert not keep_as_template(made, tmp_path / "a-file" / "kept.db", {"alembic_version", "block_type"})


def _ids(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return {row[0] for row in connection.execute("SELECT id FROM block_type")}


def _serve(home: Path, monkeypatch) -> TemporaryServer:
    monkeypatch.setenv("PREFECT_HOME", str(home))
    server = TemporaryServer().start()
    server.wait_ready(120)
    return server


def _post(server: TemporaryServer, path: str, body: dict) -> dict:
    """POST as Prefect's own client does it: a 503, which Prefect's server sends for "errors clients can retry on"
    (seen once under a load of 3, right after the server answered its health check), is asked again, up to 5 times."""
    request = urllib.request.Request(server.api_url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    for attempt in range(5):
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 4:
                raise
            time.sleep(1 + attempt)
    raise AssertionError("unreachable")


@pytest.mark.slow
def test_the_first_new_prefect_database_becomes_the_template_and_later_ones_are_its_copies(tmp_path, monkeypatch):
    """Block types get new ids wherever Prefect registers them: the same ids in a later database show it was copied."""
    import prefect

    monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    template = template_path("prefect", prefect.__version__)
    first = _serve(tmp_path / "first", monkeypatch)
    first.stop(quiet=True)
    assert template.exists() and _ids(template) == _ids(tmp_path / "first" / "prefect.db")
    with sqlite3.connect(template) as copy:  # a schema and its block types, not a run
        filled = {name for (name,) in copy.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                  if copy.execute(f'SELECT 1 FROM "{name}" LIMIT 1').fetchone()}
    assert filled == TEMPLATE_TABLES

    second = _serve(tmp_path / "second", monkeypatch)
    try:
        assert _ids(tmp_path / "second" / "prefect.db") == _ids(template)
        flow = _post(second, "/flows/", {"name": "copied"})  # the copy is a working database
        run = _post(second, "/flow_runs/", {"flow_id": flow["id"], "name": "on-a-copy"})
        assert _post(second, "/flow_runs/filter", {})[0]["id"] == run["id"]
    finally:
        second.stop(quiet=True)

    template.unlink()  # without one, the database is Prefect's own again (and becomes the template)
    third = _serve(tmp_path / "third", monkeypatch)
    third.stop(quiet=True)
    assert not _ids(tmp_path / "third" / "prefect.db") & _ids(tmp_path / "first" / "prefect.db")
