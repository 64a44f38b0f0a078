"""MLflow's record of a step killed at an epoch's end (after its latest.pt, before or after that end's samples and
evaluation were made), or after a mid-epoch latest.pt (before or after that batch's samples), then run again: the same
metric points and samples as an uninterrupted run's, none twice.

Each run is a child process that reports to the console, the JSONL file and the test's MLflow sqlite store, as a
step task does (fluxflow/train/step_run.py makes a due epoch end on resume; flows/mlflow_step_run.py drops points
it already holds).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

# Two plans of one VAE step: "epoch_end": 3 epochs of 3 batches, evaluated at every epoch's end, checkpoints at epoch
# ends only; "mid_epoch": 1 epoch of 4 batches, a checkpoint (and samples) at batch 2 and at the end.
PLANS = {
    "epoch_end": ([{"name": "s", "n_epochs": 3, "max_steps": 3, "train_vae": True, "eval_interval": 1}], 100),
    "mid_epoch": ([{"name": "s", "n_epochs": 1, "max_steps": 4, "train_vae": True}], 2),
}
# argv: output directory, experiment, session, where to die: "write_samples" (step_report.py's call) on its first call
# (the samples of epoch 1's end; of batch 2 in "mid_epoch"), "after_samples": once those were made, "-": nowhere (the
# test's FLUXFLOW_TEST_KILL_AT may kill it), and PLANS' entry as JSON.
CHILD = """
import json, os, signal, sys
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

out, experiment, session, where, plan = sys.argv[1:]
steps, checkpoint_save_interval = json.loads(plan)


def die(*args, **kwargs):
    # What was reported before has gone out first: a point still queued at a kill is lost for good when the metrics
    # file cannot give it back (sec_per_batch is in no file), which is not what these tests are about.
    mlflow.flush()
    os.kill(os.getpid(), signal.SIGKILL)


if where == "after_samples":  # the first samples made and sent, then killed
    samples = step_report.StepReport.samples
    step_report.StepReport.samples = lambda self, batch: (samples(self, batch), die())
elif where != "-":
    setattr(step_report, where, die)
client = MlflowClient()
experiment_id = experiment_id_for(client, experiment)
mlflow = MlflowTracker(client, experiment_id, open_pipeline_run(client, experiment_id, out, {}), out, session=session)
run_pipeline(tiny_config(out, steps, checkpoint_save_interval=checkpoint_save_interval),
             tracker=MultiTracker([ConsoleJsonlTracker(out), mlflow]))
assert mlflow.flush()
""".replace("TESTS", str(REPO / "tests"))


def run_child(out: Path, experiment: str, session: str, where: str = "-", env: dict | None = None,
              plan: str = "epoch_end") -> int:
    """The child's exit code; it runs in `out`'s folder (MLflow puts artifacts in ./mlruns)."""
    child = subprocess.run([sys.executable, "-c", CHILD, str(out), experiment, session, where, json.dumps(PLANS[plan])],
                           cwd=out.parent,
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


def assert_same_record(resumed: tuple[str, dict, list], uninterrupted: tuple[str, dict, list]) -> None:
    """The resumed run's record is the uninterrupted one's. Timing is not in the metrics file: the sec_per_batch
    points a process killed by the test's FLUXFLOW_TEST_KILL_AT had not sent yet (its tracking thread lags on a loaded
    machine) come back from the file without it; those that are there are there once."""
    (status, points, samples), (u_status, u_points, u_samples) = resumed, uninterrupted
    timed, u_timed = points["sec_per_batch"], u_points["sec_per_batch"]
    assert timed == sorted(set(timed)) and set(timed) <= set(u_timed) and timed[-2:] == u_timed[-2:]
    untimed = {key: value for key, value in points.items() if key != "sec_per_batch"}
    assert (status, untimed, samples) == (u_status, {k: v for k, v in u_points.items() if k != "sec_per_batch"},
                                          u_samples)


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
    assert_same_record((status, points, samples), uninterrupted)


@pytest.fixture(scope="module")
def uninterrupted_mid_epoch(tmp_path_factory, mlflow_store_module) -> tuple[str, dict, list]:
    out = tmp_path_factory.mktemp("uninterrupted_mid_epoch") / "out"
    assert run_child(out, "uninterrupted-mid-epoch", "s1", plan="mid_epoch") == 0
    return step_run_record("uninterrupted-mid-epoch")


@pytest.mark.parametrize("where, env", [
    ("write_samples", {}),  # after batch 2's latest.pt, before its samples
    ("after_samples", {}),  # after they were made and sent, with no checkpoint since
])
def test_a_step_killed_after_a_mid_epoch_checkpoint_then_resumed_has_the_samples_of_an_uninterrupted_run(
        tmp_path, uninterrupted_mid_epoch, where, env):
    experiment = f"killed-mid-epoch-{where}"
    assert run_child(tmp_path / "out", experiment, "s1", where, env, plan="mid_epoch") == -signal.SIGKILL
    assert run_child(tmp_path / "out", experiment, "s2", plan="mid_epoch") == 0

    status, points, samples = step_run_record(experiment)
    assert status == "FINISHED"
    assert any(path.startswith("samples/s_001_001_00002_") for path in samples), samples  # batch 2's, once each
    assert_same_record((status, points, samples), uninterrupted_mid_epoch)
