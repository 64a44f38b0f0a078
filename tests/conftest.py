"""Test-session set-up shared by every test: quiet, offline, nothing written outside tmp dirs."""
import sys
from pathlib import Path

import pytest

# bench/ is not an installed package: make it importable however pytest is started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Quiet, offline defaults (flows/env.py), before prefect or mlflow is imported anywhere.
import flows.env  # noqa: E402,F401

# Shared fixtures, defined once here (a session fixture defined in two modules would start two Prefect test servers);
# `s3`: a module's own moto S3 server (tests/s3_server.py).
from flow_fixtures import mlflow_store, mlflow_store_module, mlflow_template, prefect_api  # noqa: E402,F401
from s3_server import s3  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def user_cache(tmp_path_factory):
    """The user's cache (flows/mlflow_store.py's store template) in a temporary folder, for every test and child."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        folder = tmp_path_factory.mktemp("user-cache")
        monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(folder))
        yield folder
