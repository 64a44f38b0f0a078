"""The MLflow links of the Prefect artifacts open the UI the scripts started (flows/artifacts.py)."""
from __future__ import annotations

import pytest

from flows.artifacts import mlflow_run_url


@pytest.mark.parametrize(("env", "base"), [
    ({}, "http://127.0.0.1:5000"),  # scripts/mlflow_ui.sh's default
    ({"FLUXFLOW_MLFLOW_PORT": "5517"}, "http://127.0.0.1:5517"),  # the UI started on another port: was :5000
    ({"FLUXFLOW_MLFLOW_PORT": "5517", "FLUXFLOW_MLFLOW_UI_URL": "https://mlflow.example/"}, "https://mlflow.example"),
])
def test_a_run_in_a_local_store_links_to_the_ui_on_the_port_the_scripts_read(monkeypatch, env, base):
    for name in ("FLUXFLOW_MLFLOW_PORT", "FLUXFLOW_MLFLOW_UI_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert mlflow_run_url("sqlite:///mlflow.db", "3", "abc") == f"{base}/#/experiments/3/runs/abc"
    assert mlflow_run_url("http://tracker:5000", "3", "abc") == "http://tracker:5000/#/experiments/3/runs/abc"
