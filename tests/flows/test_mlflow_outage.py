"""A tracking-server outage in the middle of a step, or from the start of a run: training goes on at its pace, and
once the server is back every record reaches it, each once.

A real `mlflow server` is killed (its whole process group) while a real `fluxflow-train` trains, and started again
on the same port and store; its start-up (several seconds) is the outage. The stall is measured from the timestamps
of the metrics file, written for every batch.
"""
from __future__ import annotations

import time
from datetime import datetime

import pytest
import yaml
from helpers_tiny import tiny_raw
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


def write_two_step_pipeline(directory, experiment: str, warm_batches: int):
    """(config file, output directory) of a VAE step of `warm_batches` batches, then a flow step whose final.pt is
    registered and promoted; samples on."""
    out = directory / experiment
    raw = tiny_raw(out, [{"name": "warm", "n_epochs": 1, "train_vae": True},
                         {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff_full": True}],
                   dataset_size=4 * warm_batches, checkpoint_save_interval=warm_batches // 2)
    raw["training"]["pipeline"]["datasets"]["shapes"]["holdout"] = 8
    raw["tracking"] = {"experiment_name": experiment}
    raw["promotion"] = {"metric": "eval_fd_ours_cfg", "n_images": 8, "sampler_steps": 2}
    config = directory / f"{experiment}.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, out


def recorded(client: MlflowClient, experiment: str) -> dict:
    """What MLflow holds of one pipeline, without what differs between any two runs (ids, times, values): per run
    its status, params, the steps of every metric's points (duplicates kept), its artifacts and samples; and the
    registered versions with the step and promotion decision they carry."""
    found = client.get_experiment_by_name(experiment)
    runs = {}
    for run in client.search_runs([found.experiment_id]):
        run_id = run.info.run_id
        runs[run.info.run_name if run.data.tags.get("fluxflow.kind") == "step" else "(pipeline)"] = {
            "status": run.info.status,
            "params": run.data.params,
            "points": {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in run.data.metrics},
            "artifacts": sorted(a.path for a in client.list_artifacts(run_id)),
            "samples": sorted(a.path for a in client.list_artifacts(run_id, "samples")),
        }
    versions = sorted((v.tags.get("fluxflow.step_name"), v.tags.get("fluxflow.promotion.decision"))
                      for v in client.search_model_versions(f"name = '{experiment}'"))
    return {"runs": runs, "versions": versions}


def differences(a: dict, b: dict) -> list:
    """Where two `recorded(...)` differ: (run, field, key) with both values, for the assertion message."""
    found = [("versions", a["versions"], b["versions"])] if a["versions"] != b["versions"] else []
    for run in sorted(set(a["runs"]) | set(b["runs"])):
        x, y = a["runs"].get(run, {}), b["runs"].get(run, {})
        for field in sorted(set(x) | set(y)):
            if isinstance(x.get(field), dict) and isinstance(y.get(field), dict):
                found += [(run, field, key, x[field].get(key), y[field].get(key))
                          for key in sorted(set(x[field]) | set(y[field])) if x[field].get(key) != y[field].get(key)]
            elif x.get(field) != y.get(field):
                found.append((run, field, x.get(field), y.get(field)))
    return found


def without_timing(recorded_: dict) -> dict:
    """`recorded(...)` without `sec_per_batch`: a metrics file has no timing, so a run recorded from the files (by a
    later run of the same command) has none."""
    for run in recorded_["runs"].values():
        run["points"].pop("sec_per_batch", None)
    return recorded_


@pytest.fixture(scope="module")
def live_run(tmp_path_factory, mlflow_template, prefect_api):
    """(server, child environment): a server holding the two-step pipeline run against it live (experiment `live`),
    the reference every outage run is compared with (the same for each, so run once)."""
    from prefect.settings import PREFECT_API_URL

    directory = tmp_path_factory.mktemp("outage-server")
    server = MlflowServer(directory, mlflow_template)
    server.start()
    try:
        env = child_env(PREFECT_API_URL=PREFECT_API_URL.value(), MLFLOW_TRACKING_URI=server.uri)
        config, _ = write_two_step_pipeline(directory, "live", 400)
        with running_train(config, env, directory / "live.log") as child:
            output_of_success(child, directory / "live.log", timeout=300)
        yield server, env
    finally:
        server.kill()


@pytest.mark.parametrize("back", ["during the run", "for the next run"])
def test_a_server_down_at_the_start_gets_every_record_once_it_is_back(tmp_path, live_run, back):
    """The pipeline of `live_run` on the same server with it down when the run starts, and started once the first
    step trains, or only after the run ended (then the same command runs again). The run trains without waiting,
    says once where its records wait, exits 0, and MLflow ends holding the same runs, params, points (none twice),
    samples and registered version as the live run's."""
    mlflow_server, env = live_run
    mlflow_server.kill()
    experiment = "outage-during" if back == "during the run" else "outage-next"
    config, out = write_two_step_pipeline(tmp_path, experiment, 400)
    log = tmp_path / "outage.log"
    with running_train(config, env, log) as child:
        if back == "during the run":
            while len(training_records(out)) < 30 and child.poll() is None:
                time.sleep(0.05)
            assert child.poll() is None, log.read_text()[-3000:]
            mlflow_server.start()
        output = output_of_success(child, log, timeout=300)
    said = [line for line in output.splitlines() if "MLflow unreachable" in line]
    assert len(said) == 1, output[-3000:]
    assert f"{mlflow_server.uri}: " in said[0] and f"{out.resolve()}/graph and {out.resolve()}/samples" in said[0]
    if back == "for the next run":
        assert "registering the models and the champion/challenger decision wait for the next run" in output
        mlflow_server.start()
        with running_train(config, env, tmp_path / "again.log") as child:
            again = output_of_success(child, tmp_path / "again.log", timeout=300)
        assert "Skipping step flow: already complete" in again

    client = MlflowClient(mlflow_server.uri)
    live, outage = recorded(client, "live"), recorded(client, experiment)
    assert set(outage["runs"]) == {"(pipeline)", "warm", "flow"}
    assert outage["runs"]["warm"]["points"]["vae_loss"] == list(range(1, 401))  # every batch, each once
    assert outage["versions"] == [("flow", "promoted")]
    if back == "during the run":
        assert outage == live, differences(outage, live)
    else:
        assert without_timing(outage) == without_timing(live), differences(outage, live)
