"""Quiet, offline defaults for Prefect and MLflow.

Import this module first in every `flows` entry point, before prefect or mlflow: both read these variables at import
time. `setdefault` keeps whatever the user (or a deployment's job variables) already set. The credentials of servers
that ask for them are filled in here too, from their secret files (flows/credentials.py); a file that cannot be used
is kept in `CREDENTIALS_PROBLEM` for the entry point to report (an import is no place to exit).
"""
import os

from flows.credentials import CredentialsError, apply_secret_files

_DEFAULTS = {
    # No telemetry, no network.
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # No progress bars in logs for every model artifact MLflow downloads (flows/registry.py).
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    # A cold start of the embedded Prefect API takes 12-15 s on 2 cores; the default timeout is 20 s.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}

for _name, _value in _DEFAULTS.items():
    os.environ.setdefault(_name, _value)

CREDENTIALS_PROBLEM: str | None = None
try:
    apply_secret_files()
except CredentialsError as _exc:
    CREDENTIALS_PROBLEM = str(_exc)
