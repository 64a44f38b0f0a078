"""Fixtures for the tests of `flows/`: one Prefect test API per pytest session, one MLflow sqlite store per test.

Import them from tests/conftest.py (`from flow_fixtures import mlflow_store, mlflow_store_module, mlflow_template,
prefect_api  # noqa: F401`), not from test modules: a session fixture defined in two modules would start two Prefect
servers.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API (its own sqlite database) for the whole session: it costs 8-14 s to start."""
    from flows import env  # noqa: F401  (quiet, and the 120 s start-up timeout below)
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=None):  # None: PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
        yield


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory) -> Path:
    """An initialised, empty MLflow sqlite database: creating the schema costs 1-4 s, copying it milliseconds."""
    from flows import env  # noqa: F401
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # creates the tables
    return db


def _use_fresh_store(directory: Path, template: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    db = directory / "mlflow.db"
    shutil.copyfile(template, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(directory)  # new experiments put their artifacts in ./mlruns
    return uri


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch, mlflow_template) -> str:
    """A fresh MLflow store for one test, made the default (MLFLOW_TRACKING_URI); artifacts go under tmp_path."""
    return _use_fresh_store(tmp_path, mlflow_template, monkeypatch)


@pytest.fixture(scope="module")
def mlflow_store_module(tmp_path_factory, mlflow_template):
    """One MLflow store for a whole test module (tests keep apart by experiment name)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield _use_fresh_store(tmp_path_factory.mktemp("mlflow"), mlflow_template, monkeypatch)


@pytest.fixture
def run_step_calls(monkeypatch) -> tuple[dict, dict]:
    """Every step's run_step (fluxflow.train.pipeline's, which each step task reaches through train_step), recorded:
    (received, ran), `received[step]` the parent reference it got and `ran[step]` the (start, end) of its body by
    time.monotonic (the Prefect API's task-run timestamps come from events and may lag)."""
    import fluxflow.train.pipeline

    received: dict = {}
    ran: dict[str, tuple[float, float]] = {}
    real_run_step = fluxflow.train.pipeline.run_step

    def recording_run_step(config, step_name, parent, **kwargs):
        received[step_name] = parent
        start = time.monotonic()
        try:
            return real_run_step(config, step_name, parent, **kwargs)
        finally:
            ran[step_name] = (start, time.monotonic())

    monkeypatch.setattr(fluxflow.train.pipeline, "run_step", recording_run_step)
    return received, ran


@contextlib.contextmanager
def gpu_concurrency_limit(limit: int):
    """A `gpu` tag concurrency limit on the test API for the duration of the block (flows/gpu_slot.py)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag="gpu", concurrency_limit=limit)
    try:
        yield
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag("gpu")


@contextlib.contextmanager
def gpu_slot_held_elsewhere(release_after_s: float):
    """The `gpu` slot taken, as another run's step task holds it, for the block or `release_after_s` seconds, whichever
    ends first (a run that cannot stop while it waits for the slot ends after that, not never). Yields the holder's
    task run id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder

    holder_id = uuid.uuid4()
    with get_client(sync_client=True) as client:
        response = client.increment_concurrency_slots_with_lease(
            names=["tag:gpu"], slots=1, mode="concurrency", lease_duration=600,
            holder=ConcurrencyLeaseHolder(type="task_run", id=holder_id))
    lease_id = response.json()["lease_id"]
    once = threading.Lock()

    def release() -> None:
        if once.acquire(blocking=False):  # by the timer or at the block's end, not both
            with get_client(sync_client=True) as client:
                client.release_concurrency_slots_with_lease(lease_id)

    timer = threading.Timer(release_after_s, release)
    timer.start()
    try:
        yield holder_id
    finally:
        timer.cancel()
        release()


@contextlib.contextmanager
def run_log_lines(logger_name: str = "prefect.flow_runs"):
    """The messages of the flow runs' logger (get_run_logger's in a flow; `prefect.task_runs` in a task), whatever
    its console handler writes to, in the list it yields."""
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # Prefect's first setup, on its first flow, would replace this logger's handlers
    said: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield said
    finally:
        logger.removeHandler(handler)
