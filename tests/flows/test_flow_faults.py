"""Which step failures Prefect retries (flows/fault_policy.py): not a full disk, which would only fill again; yes a
transient error (a tracking server that did not answer once). Real flow runs on the session's Prefect test API."""
from __future__ import annotations

import errno
import os

import pytest
from test_flow_pipeline import config, run_flow, task_runs

pytestmark = pytest.mark.slow

STEPS = [{"name": "warm", "n_epochs": 1, "max_steps": 3, "train_vae": True}]


@pytest.fixture(autouse=True)
def _prefect(prefect_api):
    """Every test here talks to the session's Prefect test API."""


def test_a_full_disk_is_attempted_once_not_retried(tmp_path, mlflow_store, monkeypatch):
    from fluxflow.checkpoints import atomic_file

    def full_disk(fd):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(atomic_file, "_open_temp", full_disk)
    state, flow_run_id = run_flow(config(tmp_path, "disk-full", STEPS, retries=2, no_samples=True))
    assert state.is_failed()
    assert "the disk is full" in state.message
    warm = task_runs(flow_run_id)["warm"]
    assert warm.state.is_failed() and warm.run_count == 1


class FailsOnceLikeATrackingServer:
    """Wraps the step's tracker: its second metrics call raises ConnectionError once, as a tracking server that did
    not answer; then it behaves."""

    raised = False

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def log_metrics(self, metrics, progress):
        self.calls += 1
        if self.calls == 2 and not FailsOnceLikeATrackingServer.raised:
            FailsOnceLikeATrackingServer.raised = True
            raise ConnectionError("tracking server at http://127.0.0.1:5000 did not answer")
        self.inner.log_metrics(metrics, progress)


def test_a_transient_error_is_retried_and_the_step_completes(tmp_path, mlflow_store, monkeypatch):
    from flows import step_task

    real_make_tracker = step_task.make_tracker
    monkeypatch.setattr(step_task, "make_tracker", lambda cfg, target, node=None, step_name=None: (
        lambda pair: (FailsOnceLikeATrackingServer(pair[0]), pair[1]))(real_make_tracker(cfg, target, node, step_name)))
    FailsOnceLikeATrackingServer.raised = False
    state, flow_run_id = run_flow(config(tmp_path, "transient", STEPS, retries=2, no_samples=True))
    assert FailsOnceLikeATrackingServer.raised
    assert state.is_completed(), state.message
    assert task_runs(flow_run_id)["warm"].run_count == 2


def test_a_config_refused_in_the_flow_is_logged_as_its_message_without_a_traceback(tmp_path, mlflow_store,
                                                                                     monkeypatch):
    """A deployment run resolves its config in the flow (`prefect deployment run ... --param 'overrides=[...]'`): a
    refused config fails the run with the one-line problems, not two tracebacks of Prefect's engine in its log."""
    import logging

    from flows.fault_policy import QuietNonRetryable
    from flows.pipeline_flow import pipeline_flow

    logger = logging.getLogger("prefect.flow_runs")
    # As in a worker's fresh flow-run process: no step task has been made yet, so no filter is installed.
    monkeypatch.setattr(logger, "filters", [f for f in logger.filters if not isinstance(f, QuietNonRetryable)])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        state = pipeline_flow(config(tmp_path, "refused", STEPS), overrides=["training.pipeline.steps.nope.lr=1"],
                              return_state=True)
    finally:
        logger.removeHandler(handler)
    assert state.is_failed()
    assert "no step named 'nope' (steps: warm)" in state.message
    about_it = [r for r in records if "nope" in r.getMessage()]
    assert about_it, [r.getMessage() for r in records]
    assert [r.getMessage() for r in about_it if r.exc_info] == []


def test_an_output_another_run_holds_fails_the_run_in_one_line(tmp_path, mlflow_store):
    """Two deployment runs on one output_dir: the second failed with a traceback through the flow and the lock in
    its log (Prefect's engine logs the flow's exception with its traceback unless the error is one the user must
    fix), where fluxflow-train refuses the same case in one line."""
    import logging

    from flows.fault_policy import QuietNonRetryable
    from fluxflow.checkpoints.lock import RunLock
    from fluxflow.errors import is_retryable

    raw = config(tmp_path, "held", STEPS, no_samples=True)
    with RunLock(raw["output"]["output_path"]):  # the other run
        state, _ = run_flow(raw)
    assert state.is_failed() and "is in use by another run" in state.message
    error = state.result(raise_on_failure=False)
    assert not is_retryable(error)
    record = logging.LogRecord("prefect.flow_runs", logging.ERROR, __file__, 1, "Encountered exception during "
                               "execution: %r", (error,), (type(error), error, error.__traceback__))
    assert QuietNonRetryable().filter(record) and record.exc_info is None  # its message alone


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("given, named", [("parameter", "device"), ("file", "training.device")])
def test_a_device_the_machine_lacks_fails_the_run_before_any_step_naming_where_it_was_set(given, named, tmp_path,
                                                                                          mlflow_store):
    """`--param device=cuda` on a worker without a GPU (docs/OPERATIONS.md, "Running a deployment") failed inside the
    first step as `training.device is 'cuda' ...`, although the file said cpu, after the flow had taken the output
    directory and opened its MLflow run. Now the flow refuses it at its start, in one line without a traceback,
    naming the parameter when it was one (as `fluxflow-train --device` is named), the file's field otherwise: no
    step, no MLflow run, no output directory."""
    from mlflow.tracking import MlflowClient

    from flows.pipeline_flow import pipeline_flow

    raw = config(tmp_path, f"no-gpu-{given}", STEPS, retries=2, no_samples=True)
    if given == "file":
        raw["training"]["device"] = "cuda"
    records, state = flow_run_records(lambda: pipeline_flow(raw, device="cuda" if given == "parameter" else None,
                                                            return_state=True))
    assert state.is_failed()
    assert f"{named} is 'cuda' but no CUDA device is available (use 'auto' or 'cpu')" in state.message
    assert not state.message.split(f"{named} is")[0].endswith("training.")  # `device`, not `training.device`
    assert task_runs(state.state_details.flow_run_id) == {}
    assert MlflowClient().get_experiment_by_name(f"no-gpu-{given}") is None
    assert not (tmp_path / "out").exists()
    assert [r.getMessage() for r in records if r.exc_info] == []


def flow_run_records(run) -> list:
    """The log records of the flow and task engines while `run()` runs, and what it returned (or raised)."""
    import logging

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    loggers = [logging.getLogger(name) for name in ("prefect.flow_runs", "prefect.task_runs")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        return records, run()
    except Exception as exc:
        return records, exc
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def test_a_config_refused_in_a_deployment_run_is_logged_as_readable_lines_once(tmp_path, mlflow_store):
    """`prefect deployment run ... --param 'overrides=["training.nosuchfield=1"]'`: the log said
    `ConfigError('1 problem in FILE:\\n  - ...')` (the repr, a literal backslash-n, and the problem blamed on the file),
    then "Engine execution exited with unexpected exception" once the exception left the flow-run process."""
    import logging

    import yaml
    from prefect.flow_engine import run_flow

    from flows.pipeline_flow import pipeline_flow
    from fluxflow.config import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, "refused", STEPS)))
    # As prefect/flow_engine.py runs a deployment's flow run: its run logger receives what leaves the engine.
    records, raised = flow_run_records(lambda: run_flow(
        pipeline_flow, parameters={"config": str(path), "overrides": ["training.nosuchfield=1"]},
        error_logger=logging.getLogger("prefect.flow_runs")))
    assert isinstance(raised, ConfigError)
    problems = f"1 problem in {path}:\n  - training.nosuchfield: unknown key (from overrides training.nosuchfield)"
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == [
        f"Encountered exception during execution: {problems}"]
    assert not [r for r in records if r.exc_info or r.msg.startswith("Engine execution exited")]


def test_a_deleted_experiment_fails_the_flow_in_one_line_before_training(tmp_path, mlflow_store):
    """A deployment run into an experiment deleted in the MLflow UI trained every step, dropped every record as
    rejected ("The experiment 1 must be in the 'active' state") and finished, saying MLflow "has not answered"."""
    import logging

    from mlflow.tracking import MlflowClient

    from flows.pipeline_flow import pipeline_flow

    client = MlflowClient(mlflow_store)
    deleted = client.create_experiment("deleted")
    client.delete_experiment(deleted)
    records, state = flow_run_records(lambda: pipeline_flow(config(tmp_path, "deleted", STEPS), return_state=True))
    says = (f"tracking.experiment_name: experiment 'deleted' at {mlflow_store} is deleted; restore it with: "
            f"MLFLOW_TRACKING_URI={mlflow_store} mlflow experiments restore -x {deleted}; or choose another name")
    assert state.is_failed() and state.message.endswith(says), state.message
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == [
        f"Encountered exception during execution: {says}"]
    assert task_runs(state.state_details.flow_run_id) == {}  # nothing trained


@pytest.mark.parametrize("where", ["a file", "no folder"])
def test_a_store_the_run_cannot_make_fails_the_flow_in_one_line_before_training(tmp_path, mlflow_store, monkeypatch,
                                                                                where):
    """A deployment run (no `fluxflow-train` to refuse it first) with MLFLOW_TRACKING_URI in a folder that is a file
    logged two tracebacks of MLflow's FileExistsError; one in a folder that does not exist made the folder, where
    `fluxflow-train` refuses it (flows/mlflow_runs.py unwritable_store)."""
    import logging

    from flows.pipeline_flow import pipeline_flow

    (tmp_path / "a-file").write_text("not a folder\n")
    folder = tmp_path / ("a-file" if where == "a file" else "missing")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    records, state = flow_run_records(lambda: pipeline_flow(config(tmp_path, "no-store", STEPS), return_state=True))
    says = f"cannot create the MLflow store at {uri}: " + (
        f"{folder} is not a folder" if where == "a file" else f"folder {folder} does not exist")
    assert state.is_failed() and says in state.message, state.message
    assert [r.getMessage() for r in records if r.levelno >= logging.ERROR] == [
        f"Encountered exception during execution: {says}; run from a folder you can write, or name another store "
        "(MLFLOW_TRACKING_URI or tracking.tracking_uri)"]
    assert not [r for r in records if r.exc_info]
    assert task_runs(state.state_details.flow_run_id) == {}  # nothing trained
    assert (tmp_path / "a-file").read_text() == "not a folder\n" and not (tmp_path / "missing").exists()
