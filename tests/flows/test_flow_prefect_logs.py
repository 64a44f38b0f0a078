"""The training log in the Prefect UI: a step's console lines reach the Prefect API as logs of its task run, at the
step's log_interval, while the terminal keeps exactly today's output (each line once, on stdout); so do its
training-health warnings."""
from __future__ import annotations

import logging
import re

import pytest
from helpers_tiny import tiny_raw

pytestmark = pytest.mark.slow

# [HH:MM:SS] Step warm (1/1) | Epoch 1/2 | Batch 2/4 | VAE: ... | 0.041s/batch
CONSOLE_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (Step .*\| Batch \d+/\d+ \| VAE: .*s/batch.*)$")


@pytest.fixture(autouse=True)
def _prefect(prefect_api):
    """The session's Prefect test API."""


def run_logs(flow_run_id) -> list:
    """Every log the Prefect API holds for one flow run, oldest first, once the log worker has sent its queue."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        return client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)


def bodies(lines) -> list[str]:
    """The console lines among `lines`, without their clock time (printed and sent a moment apart)."""
    return [m.group(1) for m in map(CONSOLE_LINE.match, lines) if m]


def test_the_steps_console_lines_reach_the_prefect_run_log_at_their_log_interval(tmp_path, mlflow_store, capfd):
    from flows.pipeline_flow import pipeline_flow  # the deployments' entrypoint (deployments/prefect.yaml)

    # 16 training images in batches of 4: 4 batches per epoch, 2 epochs; a line every 2 batches.
    raw = tiny_raw(tmp_path / "out", [{"name": "warm", "n_epochs": 2, "train_vae": True}], dataset_size=16,
                   log_interval=2, no_samples=True)
    raw["tracking"] = {"experiment_name": "prefect-logs"}
    state = pipeline_flow(raw, return_state=True)
    assert state.is_completed(), state.message
    captured = capfd.readouterr()

    logs = run_logs(state.state_details.flow_run_id)
    task_run_ids = {log.task_run_id for log in logs if CONSOLE_LINE.match(log.message)}
    sent = bodies(log.message for log in logs)
    printed = bodies(captured.out.splitlines())
    assert [line.split(" | VAE")[0] for line in sent] == [
        "Step warm (1/1) | Epoch 1/2 | Batch 2/4", "Step warm (1/1) | Epoch 1/2 | Batch 4/4",
        "Step warm (1/1) | Epoch 2/2 | Batch 2/4", "Step warm (1/1) | Epoch 2/2 | Batch 4/4"]
    assert sent == printed  # the same lines, losses and timings as the terminal shows
    assert len(task_run_ids) == 1 and None not in task_run_ids  # in the step's task run
    # The terminal keeps today's output: each line once, on stdout; Prefect's console handler does not repeat it.
    assert not bodies(captured.err.splitlines()) and not any(line in captured.err for line in sent)


def test_a_training_health_warning_reaches_the_prefect_run_log_and_the_step_finishes(tmp_path, mlflow_store,
                                                                                     monkeypatch):
    from flows.pipeline_flow import pipeline_flow
    from fluxflow.models.discriminator import Discriminator

    forward = Discriminator.forward
    monkeypatch.setattr(Discriminator, "forward", lambda self, x: forward(self, x) * 0.0)  # flat: the same logits
    gan = {"name": "gan", "n_epochs": 1, "max_steps": 4, "train_vae": True, "gan_training": True}
    raw = tiny_raw(tmp_path / "out", [gan], dataset_size=16, no_samples=True)
    raw["output"]["d_flat_warn_updates"] = 2
    raw["tracking"] = {"experiment_name": "prefect-warnings"}
    state = pipeline_flow(raw, return_state=True)
    assert state.is_completed(), state.message  # the warning is a record, never a failure of the step

    warnings = [log for log in run_logs(state.state_details.flow_run_id)
                if "discriminator has been flat" in log.message]
    assert len(warnings) == 1 and warnings[0].level == logging.WARNING and warnings[0].task_run_id is not None
    assert warnings[0].message.startswith("⚠️  Step gan: ")


def test_the_training_cores_warnings_reach_the_prefect_run_log_of_their_step(tmp_path, mlflow_store):
    """A schedule that never acts, a component used untrained, captions cut short: the core's warnings (logger
    `fluxflow`) reached the terminal only, not the UI's log of the run."""
    from flows.pipeline_flow import pipeline_flow

    never_acts = {"optimization": {"schedulers": {"vae": {"type": "StepLR", "step_size": 50}}}}
    raw = tiny_raw(tmp_path / "out", [{"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True,
                                       **never_acts}], dataset_size=16, no_samples=True)
    raw["tracking"] = {"experiment_name": "prefect-core-warnings"}
    state = pipeline_flow(raw, return_state=True)
    assert state.is_completed(), state.message

    [warning] = [log for log in run_logs(state.state_details.flow_run_id) if "StepLR's step_size 50" in log.message]
    assert warning.level == logging.WARNING and warning.task_run_id is not None
    assert warning.message.startswith("Step warm: optimization.schedulers.vae: StepLR's step_size 50 is more than")


def test_the_runner_s_own_lines_reach_the_prefect_run_log_too(tmp_path, mlflow_store, capfd):
    """"Starting step", "Evaluation of", "Finished step" went to the worker's stdout only: in the UI a run that
    trained nothing (every step already complete) looked like one that trained."""
    from flows.pipeline_flow import pipeline_flow

    raw = tiny_raw(tmp_path / "out", [{"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True}],
                   dataset_size=16, no_samples=True)
    raw["tracking"] = {"experiment_name": "prefect-runner-lines"}

    def messages(state) -> list[tuple[str, bool]]:  # (message, sent as a log of a task run)
        assert state.is_completed(), state.message
        return [(log.message, log.task_run_id is not None) for log in run_logs(state.state_details.flow_run_id)]

    first = messages(pipeline_flow(raw, return_state=True))
    again = messages(pipeline_flow(raw, return_state=True))
    raw["training"]["pipeline"]["steps"][0]["lr"] = 3e-3  # its files set aside: said why, in the UI too
    changed = messages(pipeline_flow(raw, return_state=True))
    printed = capfd.readouterr().out

    assert ("Starting step: warm, epoch 1, batch 0", True) in first
    assert any("] Evaluation of warm after epoch 1: eval_" in m and in_task for m, in_task in first)
    assert any("] Finished step warm: " in m and in_task for m, in_task in first)
    assert ("Skipping steps: warm", False) in again  # the flow run's own line
    final = tmp_path / "out" / "checkpoints" / "warm" / "final.pt"
    assert (f"Skipping step warm: already complete ({final})", True) in again
    assert any(m.startswith("Re-running step warm: its configuration changed (lr: ") and in_task
               for m, in_task in changed)
    for line in ("Skipping steps: warm", "Re-running step warm: "):
        assert printed.count(line) == 1  # the terminal's lines as before: once each
