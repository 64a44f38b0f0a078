"""A tracking-server outage in the middle of a step: training goes on at its pace, and once the server is back every
metric point reaches it, each once.

A real `mlflow server` is killed (its whole process group) while a real `fluxflow-train` trains, and started again
on the same port and store; its start-up (several seconds) is the outage. The stall is measured from the timestamps
of the metrics file, written for every batch.
"""
from __future__ import annotations

import time
from datetime import datetime

import pytest
from mlflow.tracking import MlflowClient
from mlflow_server import MlflowServer
from train_cli import child_env, output_of_success, running_train, training_records, write_vae_pipeline

pytestmark = pytest.mark.slow

N_BATCHES = 1000


@pytest.fixture
def mlflow_server(tmp_path, mlflow_template):
    server = MlflowServer(tmp_path, mlflow_template)
    server.start()
    try:
        yield server
    finally:
        server.kill()


def test_training_does_not_stall_while_mlflow_is_down_and_every_point_arrives(tmp_path, prefect_api, mlflow_server):
    from prefect.settings import PREFECT_API_URL

    config, out = write_vae_pipeline(tmp_path, N_BATCHES, N_BATCHES, "outage")
    env = child_env(PREFECT_API_URL=PREFECT_API_URL.value(), MLFLOW_TRACKING_URI=mlflow_server.uri)
    log = tmp_path / "fluxflow-train.log"
    with running_train(config, env, log) as child:
        while len(training_records(out)) < 30 and child.poll() is None:
            time.sleep(0.05)
        mlflow_server.kill()
        down = datetime.now()
        time.sleep(1)
        mlflow_server.start()  # the outage: the time it takes to start again
        up = datetime.now()
        output_of_success(child, log, timeout=180)

    stamps = [datetime.fromisoformat(record["timestamp"]) for record in training_records(out)]
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
