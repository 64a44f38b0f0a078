"""A step across nodes through Ray Train, on a real local Ray cluster of two nodes (one CPU each, gloo).

The step is the 2-process step of tests/runtime/test_distributed.py, as `nodes: 2` × `nproc_per_node: 1`: each node has
one CPU and each worker takes one, so the two ranks run on the two nodes. Ray Train must give the weights torchrun
gives, and a worker killed mid-step must cost nothing but time: Ray Train restarts the group and the step resumes from
its `latest.pt`.
"""
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from ray_driver_cluster import local_ray_cluster
from test_distributed import TORCHRUN, config_text

pytestmark = pytest.mark.slow

# 4 batches; latest.pt after batch 2; the kill comes after batch 3 of rank 1 (so latest.pt at batch 2 is on disk:
# rank 0 saved it before batch 3, whose all-reduces rank 1 finished).
RAY = "{nodes: 2, nproc_per_node: 1}\n  executor: {kind: ray}"  # a step across nodes runs on a Ray cluster
KILL_POINT = "batch3_rank1"


def config_for(tmp_path, name: str, distributed: str):
    from fluxflow.config import load_config

    return load_config(yaml_dict(config_text(tmp_path / name, distributed))).config


def yaml_dict(text: str) -> dict:
    import yaml

    return yaml.safe_load(text)


def final_models(outcome) -> dict[str, torch.Tensor]:
    state = torch.load(outcome.ref.uri, map_location="cpu", weights_only=True)
    return {f"{m}.{k}": v for m, sd in state["models"].items() for k, v in sd.items()}


@pytest.fixture(scope="module")
def torchrun(tmp_path_factory):
    """The torchrun step, started first and in a thread: it trains while the Ray cluster starts (a future)."""
    from fluxflow.runtime.launch import run_step_on_processes

    tmp = tmp_path_factory.mktemp("torchrun")
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(run_step_on_processes, config_for(tmp, "out", TORCHRUN), "vae_gan", None)


@pytest.fixture(scope="module")
def cluster(torchrun, tmp_path_factory):
    """Two nodes whose workers die at KILL_POINT once the kill is armed (its `once` file removed); disarmed at start."""
    once = tmp_path_factory.mktemp("kill") / "killed"
    once.touch()
    env = {"FLUXFLOW_TEST_KILL_AT": KILL_POINT, "FLUXFLOW_TEST_KILL_ONCE": str(once)}
    with local_ray_cluster(nodes=2, env=env) as c:
        yield c, once


@pytest.fixture(scope="module")
def uninterrupted(cluster, tmp_path_factory):
    from fluxflow.runtime.launch import run_step_on_processes

    tmp = tmp_path_factory.mktemp("ray")
    return run_step_on_processes(config_for(tmp, "out", RAY), "vae_gan", None), tmp / "out"


def test_two_worker_ray_train_step_equals_the_two_process_torchrun_step(uninterrupted, torchrun):
    ray_outcome, out = uninterrupted
    torchrun_outcome = torchrun.result(timeout=600)
    assert ray_outcome.result.trained and ray_outcome.ref.global_step == torchrun_outcome.ref.global_step == 4
    ray_w, torchrun_w = final_models(ray_outcome), final_models(torchrun_outcome)
    assert ray_w.keys() == torchrun_w.keys()
    worst = max((ray_w[k].double() - torchrun_w[k].double()).abs().max().item() for k in ray_w)
    assert worst <= 1e-5, f"largest weight difference {worst}"
    # Each node has one CPU, each worker takes one: rank 0 and rank 1 on the two nodes, as the outcome says.
    assert len(ray_outcome.workers) == 2 and len({w.node_id for w in ray_outcome.workers}) == 2
    assert ray_outcome.placement().startswith("2 Ray Train workers: rank 0 on Ray node ")
    assert not torchrun_outcome.workers  # one node: torchrun, no Ray placement
    # Rank 0 alone wrote: one JSONL line per logged batch, the step's three files.
    records = [json.loads(line) for line in (out / "graph" / "training_metrics_vae_gan.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in records if "vae_loss" in r["metrics"]] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints" / "vae_gan").iterdir()
                  if p.suffix in (".pt", ".json")) == ["final.pt", "latest.pt", "ref.json"]


def test_a_ray_train_worker_killed_mid_step_resumes_from_latest_and_ends_bit_identical(cluster, uninterrupted,
                                                                                       tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    from flows.mlflow_runs import experiment_id_for, open_pipeline_run
    from flows.mlflow_tracker import MlflowTracker
    from fluxflow.train.pipeline import train_step

    # Recorded in MLflow as the Prefect task records a step of several processes: from rank 0's files once it is done.
    config = config_for(tmp_path, "out", RAY)
    client = MlflowClient(mlflow_store)
    experiment = experiment_id_for(client, "worker-kill")
    parent = open_pipeline_run(client, experiment, str(tmp_path / "out"), {})
    mlflow_tracker = MlflowTracker(client, experiment, parent, str(tmp_path / "out"), session="s1")

    def record(done):
        mlflow_tracker.record_from_files(config.step("vae_gan"), done.ref.step_key, done.ref, done.result)

    _, once = cluster
    once.unlink()  # armed: the first worker to reach KILL_POINT dies by SIGKILL and re-creates the file
    outcome = train_step(config, "vae_gan", None, None, record)
    assert once.exists(), "no worker reached the kill point"
    # Rank 1 died after batch 3; the restarted group resumed from latest.pt, saved after batch 2.
    assert outcome.result.resumed_from == (0, 2)
    expected, got = final_models(uninterrupted[0]), final_models(outcome)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "weights differ from the uninterrupted run"
    records = [json.loads(line) for line in (tmp_path / "out" / "graph" / "training_metrics_vae_gan.jsonl")
               .read_text().splitlines()]
    assert [r["batch"] for r in records if "vae_loss" in r["metrics"]] == [1, 2, 3, 4]  # no batch logged twice
    # MLflow: one FINISHED run for the step, each batch's point once (issue 19's Done-when, for a killed worker).
    assert mlflow_tracker.flush()
    (run,) = client.search_runs([experiment], "tags.`fluxflow.kind` = 'step'")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "vae_loss")) == [1, 2, 3, 4]
