"""MLflow's record of a step killed at an epoch's end (after its latest.pt, before or after that end's samples and
evaluation were made), then run again: the same metric points and samples as an uninterrupted run's, none twice.

Each run is a child process that reports to the console, the JSONL file and the test's MLflow sqlite store, as a
step task does (fluxflow/train/step_run.py makes a due epoch end on resume; flows/mlflow_step_run.py drops points
it already holds).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# One VAE step of 3 epochs of 3 batches, evaluated at every epoch's end, checkpoints at epoch ends only. argv: output
# directory, experiment, session, and where to die: "write_samples" (step_report.py's call) on its first call, the
# samples of epoch 1's end; "-": nowhere (the test's FLUXFLOW_TEST_KILL_AT may kill it).
CHILD = """
import os, signal, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, "TESTS")
from helpers_tiny import tiny_config
from mlflow.tracking import MlflowClient
import fluxflow.train.step_report as step_report
from flows.mlflow_runs import experiment_id_for, open_pipeline_run
from flows.mlflow_tracker import MlflowTracker
from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.tracking import ConsoleJsonlTracker, MultiTracker

out, experiment, session, where = sys.argv[1:]
if where != "-":
    setattr(step_report, where, lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL))
client = MlflowClient()
experiment_id = experiment_id_for(client, experiment)
mlflow = MlflowTracker(client, experiment_id, open_pipeline_run(client, experiment_id, out, {}), out, session=session)
steps = [{"name": "s", "n_epochs": 3, "max_steps": 3, "train_vae": True, "eval_interval": 1}]
run_pipeline(tiny_config(out, steps, checkpoint_save_interval=100), tracker=MultiTracker([ConsoleJsonlTracker(out),
                                                                                         mlflow]))
assert mlflow.flush()
""".replace("TESTS", str(REPO / "tests"))


def run_child(out: Path, experiment: str, session: str, where: str = "-", env: dict | None = None) -> int:
    """The child's exit code; it runs in `out`'s folder (MLflow puts artifacts in ./mlruns)."""
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), experiment, session, where], cwd=out.parent,
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {})))
    assert child.returncode in (0, -signal.SIGKILL), child.stdout + child.stderr
    return child.returncode


def step_run_record(experiment: str) -> tuple[str, dict, list]:
    """(status, {metric: [(step, value)]} with sec_per_batch's steps only, sample artifacts) of the step's run."""
    client = MlflowClient()
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id],
                               "tags.`fluxflow.kind` = 'step'")
    points = {}
    for key in run.data.metrics:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))
        points[key] = [step for step, _ in history] if key == "sec_per_batch" else history  # timings differ
    samples = sorted(a.path for a in client.list_artifacts(run.info.run_id, "samples"))
    return run.info.status, points, samples


def without_timing(points: dict) -> dict:
    return {key: value for key, value in points.items() if key != "sec_per_batch"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, mlflow_store_module) -> tuple[str, dict, list]:
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    assert run_child(out, "uninterrupted", "s1") == 0
    return step_run_record("uninterrupted")


@pytest.mark.parametrize("where, env", [
    ("write_samples", {}),  # before epoch 1's samples and evaluation
    ("-", {"FLUXFLOW_TEST_KILL_AT": "batch4_rank0"}),  # after they were made and sent, with no checkpoint since
])
def test_a_step_killed_at_an_epoch_end_then_resumed_has_the_mlflow_record_of_an_uninterrupted_run(
        tmp_path, uninterrupted, where, env):
    experiment = f"killed-{where}"  # the module's tests share one store
    assert run_child(tmp_path / "out", experiment, "s1", where, env) == -signal.SIGKILL
    assert run_child(tmp_path / "out", experiment, "s2") == 0

    status, points, samples = step_run_record(experiment)
    assert status == "FINISHED"
    assert [step for step, _ in points["eval_psnr"]] == [3, 6, 9]  # every epoch's evaluation, once
    # Timing is not in the metrics file: the points the killed process had not sent yet (its tracking thread lags on
    # a loaded machine) come back from the file without their sec_per_batch. Those that are there are there once.
    timed, uninterrupted_timed = points.pop("sec_per_batch"), uninterrupted[1]["sec_per_batch"]
    assert timed == sorted(set(timed)) and set(timed) <= set(uninterrupted_timed) and timed[-6:] == [4, 5, 6, 7, 8, 9]
    assert (status, points, samples) == (uninterrupted[0], without_timing(uninterrupted[1]), uninterrupted[2])
