"""Test-session set-up shared by every test: quiet, offline, nothing written outside tmp dirs."""
import os
import sys
from pathlib import Path

# bench/ is not an installed package: make it importable however pytest is started.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Must be set before prefect or mlflow are imported anywhere (PITFALLS.md).
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

# Shared fixtures of the flows/ tests, defined once here (a session fixture defined in two modules would start two
# Prefect test servers).
from flow_fixtures import mlflow_store, mlflow_store_module, mlflow_template, prefect_api  # noqa: E402,F401
