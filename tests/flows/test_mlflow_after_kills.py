"""MLflow's records after `kill -9` of a real `fluxflow-train` process group, then the same command again: one nested
run per step, closed FINISHED, and no metric point twice for the same key and step.

The children run on the session's Prefect test API and an MLflow sqlite store of the test. Kills land before the
step's first mid-step checkpoint, after it (the resumed step trains and reports again the batches since), and — at a
test-only kill point (fluxflow/runtime/kill_points.py) — after the step's `ref.json`, before its MLflow run was closed.
"""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from train_cli import (
    child_env,
    kill_group_when,
    output_of_success,
    running_train,
    start_train,
    training_records,
    write_vae_pipeline,
)

pytestmark = pytest.mark.slow

N_BATCHES, CHECKPOINT_EVERY = 300, 100


@pytest.fixture
def pipeline(tmp_path, prefect_api, mlflow_store):
    """(config file, output directory, environment of a fluxflow-train child) for one VAE step of N_BATCHES."""
    from prefect.settings import PREFECT_API_URL

    config, out = write_vae_pipeline(tmp_path, N_BATCHES, CHECKPOINT_EVERY, "kills")
    return config, out, child_env(PREFECT_API_URL=PREFECT_API_URL.value())


def run_to_end(config: Path, env: dict, log: Path) -> str:
    with running_train(config, env, log) as child:
        return output_of_success(child, log)


def step_runs() -> list:
    client = MlflowClient()
    experiment = client.get_experiment_by_name("kills")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], "tags.`fluxflow.kind` = 'step'")


def logged_steps(key: str) -> list[int]:
    """Steps of every point of `key` in the step's run(s), duplicates included."""
    client = MlflowClient()
    return sorted(m.step for run in step_runs() for m in client.get_metric_history(run.info.run_id, key))


def assert_one_finished_run_without_duplicates(out: Path) -> None:
    [run] = step_runs()
    assert run.info.status == "FINISHED"
    client = MlflowClient()
    for key in run.data.metrics:
        found = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert len(found) == len(set(found)), f"{key}: {len(found) - len(set(found))} points logged twice"
    assert logged_steps("vae_loss") == list(range(1, N_BATCHES + 1))
    assert logged_steps("epoch") == list(range(1, N_BATCHES + 1))  # once at the last step too
    assert "final/vae_loss" in run.data.metrics
    # the metrics file: every batch once
    assert [r["global_step"] for r in training_records(out)] == list(range(1, N_BATCHES + 1))


def test_kills_before_and_after_the_first_checkpoint_leave_one_run_and_no_point_twice(pipeline, tmp_path):
    config, out, env = pipeline
    latest = out / "checkpoints" / "warm" / "latest.pt"

    first = start_train(config, env, tmp_path / "run1.log")
    kill_group_when(first, lambda: len(logged_steps("vae_loss")) >= 10, "10 points in MLflow")
    assert not latest.exists(), "killed too late: the step had reached its first checkpoint"
    assert [r.info.status for r in step_runs()] == ["RUNNING"]  # what a kill -9 leaves

    second = start_train(config, env, tmp_path / "run2.log")  # trains from batch 0 again, in the same run
    kill_group_when(second, lambda: latest.exists() and max(logged_steps("vae_loss"), default=0) > CHECKPOINT_EVERY
                    + 20, "20 points logged beyond the first checkpoint")
    assert len(step_runs()) == 1

    output = run_to_end(config, env, tmp_path / "run3.log")  # resumes at the checkpoint, reports 20+ batches again
    assert f"Resuming from checkpoint: step=1 (warm), epoch=1, batch={CHECKPOINT_EVERY}" in output
    assert_one_finished_run_without_duplicates(out)


def test_a_kill_after_ref_json_leaves_a_run_the_next_run_closes(pipeline, tmp_path):
    config, out, env = pipeline
    killed = start_train(config, dict(env, FLUXFLOW_TEST_KILL_AT="step_finished"), tmp_path / "run1.log")
    killed.wait(timeout=120)
    assert killed.returncode == -signal.SIGKILL, (tmp_path / "run1.log").read_text()[-3000:]
    assert (out / "checkpoints" / "warm" / "ref.json").exists()
    assert [r.info.status for r in step_runs()] == ["RUNNING"]
    assert "final/vae_loss" not in step_runs()[0].data.metrics

    output = run_to_end(config, env, tmp_path / "run2.log")
    assert "Skipping step warm: already complete" in output
    assert_one_finished_run_without_duplicates(out)
