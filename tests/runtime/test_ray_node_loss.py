"""A whole Ray node lost mid-step (its raylet and every process on it, SIGKILL), on a real local Ray cluster.

A head without CPUs (no training worker runs there: losing the head ends the cluster) and three one-CPU nodes; the GAN
step of tests/test_ray_train_step.py, 100 batches, with `nodes: 2` takes two of them. Once its `latest.pt` exists, a
node holding a worker is removed. Ray Train restarts the group on the two nodes left, the step resumes from
`latest.pt`, and its weights must equal, bit for bit, those of the same step under torchrun with 2 processes,
uninterrupted (trained meanwhile in a thread), with each batch logged once, and one FINISHED MLflow run holding each
batch's point once (recorded from rank 0's files, as the Prefect task records a step of several processes). About 60 s
on 2 cores. The cluster (tests/ray_driver_cluster.py) is stopped by the pids of the processes it started; the test then
checks that no process of it is left, Ray's workers included (found by the cluster's RAY_TMPDIR in their environment:
they rename themselves `ray::...`).
"""
from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from process_groups import alive
from ray_driver_cluster import local_ray_cluster
from test_distributed import TORCHRUN, config_text
from test_ray_train_step import RAY, final_models

pytestmark = pytest.mark.slow

BATCHES = 100  # long enough that the node goes while the step trains, not after
STEP_TIMEOUT_S = 300.0


def config_for(out: Path, distributed: str):
    from fluxflow.config import load_config

    text = config_text(out, distributed)
    text = text.replace("size: 32", "size: 404").replace("max_steps: 4", f"max_steps: {BATCHES}")
    return load_config(yaml.safe_load(text)).config


def processes_with_env(entry: str) -> list[int]:
    """Pids of the processes (but this one) whose environment holds `entry` (KEY=value)."""
    found, needle = [], entry.encode() + b"\0"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if needle in f.read() + b"\0" and alive(int(pid)):
                    found.append(int(pid))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def remove_a_training_node(cluster, step_running, latest: Path):
    """Once `latest.pt` exists: a worker node whose one CPU a Ray Train worker holds, removed with every process on
    it (SIGKILL). Returns the node, or None when the step ended first."""
    from ray._private.state import available_resources_per_node

    while not latest.exists() and step_running():
        time.sleep(0.05)
    while step_running():
        free = available_resources_per_node()
        victim = next((n for n in cluster.worker_nodes if n.node_id in free and free[n.node_id].get("CPU", 0) < 1),
                      None)
        if victim is not None:
            cluster.remove_node(victim, allow_graceful=False)
            return victim
        time.sleep(0.05)
    return None


@pytest.mark.timeout(2 * STEP_TIMEOUT_S)
def test_a_node_lost_mid_step_resumes_from_latest_and_ends_bit_identical(tmp_path, mlflow_store):
    from mlflow.tracking import MlflowClient

    from flows.mlflow_runs import experiment_id_for, open_pipeline_run
    from flows.mlflow_tracker import MlflowTracker
    from flows.step_task import workers_tags
    from fluxflow.runtime.launch import run_step_on_processes
    from fluxflow.train.pipeline import train_step

    # The Ray step is recorded in MLflow as the Prefect task records it: from rank 0's files once the step is done.
    config = config_for(tmp_path / "ray", RAY)
    client = MlflowClient(mlflow_store)
    experiment = experiment_id_for(client, "node-loss")
    parent = open_pipeline_run(client, experiment, str(tmp_path / "ray"), {})
    mlflow_tracker = MlflowTracker(client, experiment, parent, str(tmp_path / "ray"), session="s1")

    def record(done):
        mlflow_tracker.record_from_files(config.step("vae_gan"), done.ref.step_key, done.ref, done.result,
                                         tags=workers_tags(done.workers))

    with ThreadPoolExecutor(2) as pool:
        reference = pool.submit(run_step_on_processes, config_for(tmp_path / "torchrun", TORCHRUN), "vae_gan", None,
                                STEP_TIMEOUT_S)
        with local_ray_cluster(nodes=4, head_cpus=0) as cluster:
            ray_tmpdir = os.path.dirname(cluster.head_node.get_temp_dir_path())
            step = pool.submit(train_step, config, "vae_gan", None, None, record)
            latest = tmp_path / "ray" / "checkpoints" / "vae_gan" / "latest.pt"
            victim = remove_a_training_node(cluster, lambda: not step.done(), latest)
            outcome = step.result()
            nodes_left = {n.node_id for n in cluster.worker_nodes}  # the removed one is no longer listed
        ray_left = processes_with_env(f"RAY_TMPDIR={ray_tmpdir}")
        deadline = time.monotonic() + 15  # workers of the removed nodes notice their raylet is gone
        while ray_left and time.monotonic() < deadline:
            time.sleep(0.5)
            ray_left = processes_with_env(f"RAY_TMPDIR={ray_tmpdir}")
        torchrun = reference.result()

    assert victim is not None, "the step ended before a node could be removed"
    assert not ray_left, f"processes of the test's Ray cluster left running: {ray_left}"
    # Ray Train restarted the group without the node and the step went on from latest.pt, not from batch 0.
    assert outcome.result.resumed_from is not None and outcome.result.resumed_from[1] > 0
    assert outcome.ref.global_step == torchrun.ref.global_step == BATCHES
    expected, got = final_models(torchrun), final_models(outcome)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected), "weights differ from the uninterrupted run"
    # Rank 0 wrote each batch's line once: the batches redone after the restart replaced nothing already logged.
    records = [json.loads(line) for line in (tmp_path / "ray" / "graph" / "training_metrics_vae_gan.jsonl")
               .read_text().splitlines()]
    assert [r["batch"] for r in records if "vae_loss" in r["metrics"]] == list(range(1, BATCHES + 1))
    # MLflow: one FINISHED run for the step, each batch's point once.
    assert mlflow_tracker.flush()
    (run,) = client.search_runs([experiment], "tags.`fluxflow.kind` = 'step'")
    assert run.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "vae_loss")) == list(range(1, BATCHES + 1))
    # Where it trained: the two nodes of the restarted group, one rank each, the removed node not among them; the same
    # on the step's run.
    assert len(outcome.workers) == 2 and len({w.node_id for w in outcome.workers}) == 2
    assert victim.node_id not in {w.node_id for w in outcome.workers}
    assert {w.node_id for w in outcome.workers} <= nodes_left
    assert json.loads(run.data.tags["fluxflow.ray_train_workers"]) == [w.to_dict() for w in outcome.workers]
