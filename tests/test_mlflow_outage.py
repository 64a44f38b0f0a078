"""A tracking-server outage in the middle of a step: training goes on at its pace, and once the server is back every
metric point reaches it, each once.

A real `mlflow server` is killed (its whole process group) while a real `fluxflow-train` trains, and started again
on the same port and store; its start-up (several seconds) is the outage. The stall is measured from the timestamps
of the metrics file, written for every batch.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from helpers_tiny import tiny_raw
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N_BATCHES = 1000


@pytest.fixture
def mlflow_server(tmp_path, mlflow_template):
    server = MlflowServer(tmp_path, mlflow_template)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def training_lines(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [record for record in records if "vae_loss" in record["metrics"]]


def test_training_does_not_stall_while_mlflow_is_down_and_every_point_arrives(tmp_path, prefect_api, mlflow_server):
    from prefect.settings import PREFECT_API_URL

    out = tmp_path / "out"
    raw = tiny_raw(out, [{"name": "warm", "n_epochs": 1, "train_vae": True}], dataset_size=4 * N_BATCHES,
                   checkpoint_save_interval=N_BATCHES, no_samples=True)
    raw["tracking"] = {"experiment_name": "outage"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PREFECT_API_URL=PREFECT_API_URL.value(),
               MLFLOW_TRACKING_URI=mlflow_server.uri)
    metrics = out / "graph" / "training_metrics_warm.jsonl"
    log = tmp_path / "fluxflow-train.log"
    with open(log, "w") as sink:
        child = subprocess.Popen([sys.executable, "-m", "flows.cli_train", "--config", "config.yaml", "--quiet"],
                                 cwd=tmp_path, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while len(training_lines(metrics)) < 30 and child.poll() is None:
            time.sleep(0.05)
        mlflow_server.kill()
        down = datetime.now()
        time.sleep(1)
        mlflow_server.start()  # the outage: the time it takes to start again
        up = datetime.now()
        child.wait(timeout=180)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
    output = log.read_text(errors="replace")
    assert child.returncode == 0, output[-3000:]

    lines = training_lines(metrics)
    stamps = [datetime.fromisoformat(line["timestamp"]) for line in lines]
    during = [s for s in stamps if down <= s <= up]
    assert len(during) > 50, f"{len(during)} batches trained during the outage: training waited on MLflow"
    stall = max((b - a).total_seconds() for a, b in zip(stamps, stamps[1:]))
    print(f"outage {(up - down).total_seconds():.1f} s, {len(during)} batches trained during it, longest time "
          f"between two batches {stall:.2f} s")
    assert stall < 5

    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("outage").experiment_id
    [run] = client.search_runs([experiment], "tags.`fluxflow.kind` = 'step'")
    assert run.info.status == "FINISHED" and "final/vae_loss" in run.data.metrics
    logged = sorted(m.step for m in client.get_metric_history(run.info.run_id, "vae_loss"))
    assert logged == list(range(1, N_BATCHES + 1))  # every point arrived, none twice
