"""Commands that only read an MLflow store (fluxflow-compare, fluxflow-generate --model, fluxflow-export --model)
answer at once with one line when the store cannot be read: a server that does not answer (MLflow's client would
retry for minutes), a sqlite file that does not exist (MLflow would create an empty store there), or a store MLflow
fails to read (a folder, a FIFO, a file that is not a database, a scheme it does not know)."""
from __future__ import annotations

import os
import sqlite3
import time

import pytest
from mlflow_server import free_port

from flows import cli_compare, cli_export, cli_generate


def stores(tmp_path) -> dict[str, tuple[str, str]]:
    """{case: (tracking URI, what the line says)}"""
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    (tmp_path / "notes.txt").write_text("not a database\n")
    os.mkfifo(tmp_path / "fifo")
    typo, fifo, db = tmp_path / "typo.db", tmp_path / "fifo", tmp_path / "mlflow.db"
    sqlite3.connect(db).execute("create table t (x)").connection.close()
    other, empty = tmp_path / "other.db", tmp_path / "empty.db"
    sqlite3.connect(other).execute("create table notes (x)").connection.close()
    empty.touch()
    return {"server down": (down, f"the MLflow server at {down} does not answer"),
            "no such file": (f"sqlite:///{typo}", f"no MLflow store at sqlite:///{typo} (no such file)"),
            "a folder": (f"sqlite:///{tmp_path}", f"cannot read the MLflow store at sqlite:///{tmp_path}: {tmp_path} "
                                                  "is a folder, not a regular file"),
            # MLflow retried its "disk I/O error" for minutes.
            "a FIFO": (f"sqlite:///{fifo}", f"cannot read the MLflow store at sqlite:///{fifo}: "
                                            f"{fifo} is a FIFO (named pipe), not a regular file"),
            # These three ended in MLflow's or SQLAlchemy's traceback.
            "not a database": (f"sqlite:///{tmp_path / 'notes.txt'}", "file is not a database"),
            # A path, as --help's default ./mlflow.db: was MLflow's "... is in maintenance mode", no remedy said.
            "a plain path": (str(tmp_path), f"cannot read the MLflow store at {tmp_path}: MLflow reads a folder or "
                                            "file: URI as a file store, which it no longer opens (unless "
                                            "MLFLOW_ALLOW_FILE_STORE=true); name a database, e.g. sqlite:///mlflow.db"),
            # MLflow's first sentence only ("got unsupported URI ..."): the schemes it reads were cut off.
            "unknown scheme": ("mlfow://typo", "got unsupported URI 'mlfow://typo' for model registry data storage. "
                                               "Supported URI schemes are: ["),
            # MLflow made these two stores: its 60-odd tables beside another program's, or in a file the user made.
            "another program's database": (f"sqlite:///{other}", f"cannot read the MLflow store at sqlite:///{other}: "
                                                                 f"{other} is a SQLite database of another program "
                                                                 "(its tables: notes), not an MLflow store"),
            "an empty file": (f"sqlite:///{empty}", f"no MLflow store at sqlite:///{empty} (the file is empty)"),
            "a SQLite file as a path": (str(db), f"cannot read the MLflow store at {db}: a SQLite file is named as "
                                                 f"a URI, sqlite:///{db}")}


@pytest.mark.parametrize("case", ["server down", "no such file", "a folder", "a FIFO", "not a database", "a plain path",
                                  "unknown scheme", "another program's database", "an empty file",
                                  "a SQLite file as a path"])
@pytest.mark.parametrize("command", ["compare", "generate", "export"])
def test_a_store_that_cannot_be_read_is_one_line_and_exit_2_at_once(tmp_path, capsys, case, command):
    uri, says = stores(tmp_path)[case]
    started = time.monotonic()
    if command == "compare":
        code = cli_compare.main(["--experiment", "x", "--tracking-uri", uri, "--output", str(tmp_path / "cmp")])
    elif command == "generate":
        code = cli_generate.main(["--model", "models:/x@champion", "--tracking-uri", uri, "--prompt", "a red circle",
                                  "--output", str(tmp_path / "images")])
    else:
        code = cli_export.main(["--model", "models:/x@champion", "--tracking-uri", uri, "--output",
                                str(tmp_path / "exported")])
    assert code == 2
    assert time.monotonic() - started < 10  # MLflow's own retries take minutes
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"fluxflow-{command}: ") and says in line, line
    assert not (tmp_path / "typo.db").exists()  # no empty store was made
    assert (tmp_path / "empty.db").stat().st_size == 0
    with sqlite3.connect(tmp_path / "other.db") as other:
        assert other.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall() == [("notes",)]


@pytest.mark.parametrize("export", [False, True])
@pytest.mark.parametrize("command", ["generate", "export"])
def test_a_model_folder_that_is_not_an_mlflow_model_is_one_line(mlflow_store, tmp_path, capsys, command, export):
    """First a traceback, then MLflow's "No such artifact: 'MLmodel'"; a folder of fluxflow-export (its config.json)
    is pointed to --weights."""
    folder = tmp_path / "exported"
    folder.mkdir()
    if export:
        (folder / "config.json").write_text("{}")
    if command == "generate":
        code = cli_generate.main(["--model", str(folder), "--prompt", "x", "--output", str(tmp_path / "out")])
    else:
        code = cli_export.main(["--model", str(folder), "--output", str(tmp_path / "again")])
    assert code == 2
    hint = "; a folder written by fluxflow-export is read with fluxflow-generate --weights" if export else ""
    assert capsys.readouterr().err == (f"fluxflow-{command}: --model {folder} is not an MLflow model: no MLmodel file "
                                       f"in it{hint}\n")


def test_a_run_refuses_another_programs_database_as_its_store_and_takes_an_empty_file(tmp_path):
    """A run's store check (fluxflow-train and the flow) refuses it too: MLflow would add its tables to the file. An
    empty file is a store not made yet, which a run makes."""
    from flows.mlflow_runs import unusable_store

    other, empty = tmp_path / "other.db", tmp_path / "empty.db"
    sqlite3.connect(other).execute("create table notes (x)").connection.close()
    empty.touch()
    assert f"{other} is a SQLite database of another program (its tables: notes)" in unusable_store(
        f"sqlite:///{other}")
    assert unusable_store(f"sqlite:///{empty}") is None
