"""Test-session set-up shared by every test: quiet, offline, nothing written outside tmp dirs (not the user's cache,
Prefect home or temporary folder)."""
import atexit
import getpass
import glob
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# bench/ is not an installed package: make it importable however pytest is started.
sys.path.insert(0, str(REPO))

# Quiet, offline defaults (flows/env.py), before prefect or mlflow is imported anywhere.
import flows.env  # noqa: E402,F401

# Shared fixtures, defined once here (a session fixture defined in two modules would start two Prefect test servers);
# `s3`: a module's own moto S3 server (tests/s3_server.py).
from flow_fixtures import (mlflow_store, mlflow_store_module, mlflow_template, prefect_api,  # noqa: E402,F401
                           run_step_calls)
from process_groups import alive  # noqa: E402
from s3_server import s3  # noqa: E402,F401


def pytest_configure(config) -> None:
    """Each parallel test process (Makefile: PYTEST_WORKERS) trains on its share of the cores, not on all of them:
    on 2 cores, two processes of two torch threads each made `make test-fast` slower (docs/PERFORMANCE.md, "The test
    suite"). Processes the tests start keep torch's default; a test that needs more than one thread sets its count
    itself."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """The user's cache (flows/mlflow_runs.py's store template) in a temporary folder, for every test and child."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        folder = tmp_path_factory.mktemp("user-cache")
        monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="session", autouse=True)
def user_prefect_home(tmp_path_factory):
    """The user's Prefect home (PREFECT_HOME: the database of fluxflow-train's temporary server, a kept server's
    file) in a temporary folder, for every process the tests start: not ~/.prefect, and not one database shared by
    the parallel test processes (Makefile: PYTEST_WORKERS). Tests that time or pin a home set their own."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        folder = tmp_path_factory.mktemp("prefect-home")
        monkeypatch.setenv("PREFECT_HOME", str(folder))
        yield folder


def sweep_ended_sessions() -> None:
    """The folders of earlier test processes that ended without their exit hooks (killed: seen once in three runs
    with a parallel worker at the end of a session), named after their pid; a live process's folder is kept."""
    for path in glob.glob(os.path.join(tempfile.gettempdir(), "fft-*-*")):
        pid = os.path.basename(path).split("-")[1]
        if pid.isdigit() and not alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def temporary_files(tmp_path_factory):
    """Temporary files of the tests and every process they start (TMPDIR) in one folder, removed at the end (or by
    the next session, where this process was killed): what a killed process leaves (torchrun's and multiprocessing's
    folders, MLflow's artifact staging) goes with it. Short, because Ray puts its sockets under TMPDIR.
    torch.compile's cache stays where torch keeps it, reused across runs."""
    tmp_path_factory.getbasetemp()  # pytest's own folders are placed first, under the machine's temporary folder
    sweep_ended_sessions()
    folder = tempfile.mkdtemp(prefix=f"fft-{os.getpid()}-")
    inductor = os.path.join(tempfile.gettempdir(), f"torchinductor_{getpass.getuser()}")  # torch's default
    # Removed at the interpreter's exit, after the exit hooks registered later (Prefect's test harness removes its
    # own folder in there then): atexit runs them last-registered first.
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR", inductor))
        monkeypatch.setenv("TMPDIR", folder)
        monkeypatch.setattr(tempfile, "tempdir", folder)
        yield folder


def mlflow_records_in_the_checkout() -> set[str]:
    """What MLflow writes where no store or artifact root is named: ./mlflow.db and ./mlruns/<experiment>/<run> of
    the working folder, which for the tests and the processes they start is this checkout."""
    found = {"mlflow.db"} if (REPO / "mlflow.db").exists() else set()
    return found | {str(path.relative_to(REPO)) for path in REPO.glob("mlruns/*/*")}


@pytest.fixture(scope="session", autouse=True)
def checkout_left_without_mlflow_records():
    """No test leaves MLflow records in this checkout (once, a Prefect worker's run created its experiment with the
    default artifact root, ./mlruns of the repository). What `make demo` wrote there before is left alone."""
    before = mlflow_records_in_the_checkout()
    yield
    added = mlflow_records_in_the_checkout() - before
    assert not added, f"tests wrote MLflow records into the checkout {REPO}: {sorted(added)}"


@pytest.fixture(autouse=True)
def no_stop_request_carried_over():
    """A stop request is process-wide (fluxflow/runtime/stop_request.py): one left by a test (an interrupted flow's)
    stopped the next training of its worker with StepInterrupted, a KeyboardInterrupt, which ended the whole xdist
    worker ("node down: keyboard-interrupt") and the run with it."""
    from fluxflow.runtime.stop_request import clear_stop_request

    clear_stop_request()
    yield
    clear_stop_request()


@pytest.fixture(autouse=True)
def prefect_console_on_this_tests_stderr():
    """Prefect's console handlers keep the stream they were made with: made while a test captured stderr, they wrote
    to that closed stream in a later test of the process, which then found "--- Logging error --- Traceback" in its
    own stderr (tests/flows/test_flow_pipeline.py's busy-directory test, after other flows on its worker)."""
    handlers = sys.modules.get("prefect.logging.handlers")  # only once some test imported Prefect
    if handlers is not None:
        for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
            for handler in getattr(logger, "handlers", ()):
                if isinstance(handler, handlers.PrefectConsoleHandler):
                    handler.stream = handler.console.file = sys.stderr  # setStream would flush the closed one
    yield
