"""Ctrl-C (or SIGTERM) anywhere in the flow once the pipeline's MLflow run is open: the run ends KILLED.

A Ctrl-C just after `Beginning flow run` (while MLflow opens the run, before the first step starts) left it RUNNING
with no end time, and one on a re-run of a pipeline that had FINISHED turned that run back to RUNNING for good. One
during registration or promotion, after the steps, left it FINISHED and the step run's logged model PENDING forever.
The interrupts here are a KeyboardInterrupt raised at that point of the flow, in this process.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
from flow_fixtures import gpu_concurrency_limit, gpu_slot_held_elsewhere, run_log_lines
from helpers_tiny import tiny_raw
from mlflow.tracking import MlflowClient


@pytest.fixture(autouse=True)
def _prefect(prefect_api):
    """Every test here talks to the session's Prefect test API."""


def config(tmp_path: Path, experiment: str, steps: list[dict] | None = None) -> dict:
    raw = tiny_raw(tmp_path / "out", steps, dataset_size=16, no_samples=True)
    raw["tracking"] = {"experiment_name": experiment}
    return raw


def interrupted_flow(raw: dict) -> None:
    from flows.pipeline_flow import pipeline_flow
    from flows.tracking_queue import TRACKING

    with pytest.raises(KeyboardInterrupt):
        pipeline_flow(raw)
    deadline = time.monotonic() + 30  # whatever the flow left queued has gone out before the runs are read
    while TRACKING.pending() and time.monotonic() < deadline:
        time.sleep(0.05)


def pipeline_runs(experiment: str) -> list:
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs(
        [found.experiment_id], filter_string="tags.`fluxflow.kind` = 'pipeline'")


def finished_pipeline_run(raw: dict) -> tuple[str, int]:
    """The parent run a finished earlier run of the pipeline left: (run id, end time)."""
    from flows.mlflow_runs import experiment_id_for, pipeline_run_tags

    client = MlflowClient()
    output_dir = str((Path(raw["output"]["output_path"])).resolve())
    run = client.create_run(experiment_id_for(client, raw["tracking"]["experiment_name"]),
                            tags=pipeline_run_tags(output_dir), run_name="out")
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id, client.get_run(run.info.run_id).info.end_time


@pytest.mark.parametrize("earlier", [False, True], ids=["first-run", "re-run-of-a-finished-pipeline"])
@pytest.mark.parametrize("where", ["while-mlflow-opens-the-run", "before-the-first-step"])
def test_ctrl_c_before_any_step_starts_leaves_the_pipeline_run_killed(where, earlier, tmp_path, mlflow_store,
                                                                       monkeypatch):
    from flows import artifacts
    from flows.tracking_queue import TRACKING

    raw = config(tmp_path, f"ctrl-c-{where}-{earlier}")
    before = finished_pipeline_run(raw) if earlier else None
    if where == "before-the-first-step":
        def ctrl_c(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(artifacts, "start_progress", ctrl_c)
    else:  # the flow's first wait on the tracking queue is for the run's opening
        wait, calls = TRACKING.wait, []

        def ctrl_c_at_first(seq, stall_s):
            calls.append(seq)
            if len(calls) == 1:
                raise KeyboardInterrupt
            return wait(seq, stall_s)

        monkeypatch.setattr(TRACKING, "wait", ctrl_c_at_first)

    interrupted_flow(raw)

    runs = pipeline_runs(raw["tracking"]["experiment_name"])
    assert [(r.info.status, r.info.end_time is not None) for r in runs] == [("KILLED", True)]
    if before:
        assert runs[0].info.run_id == before[0] and runs[0].info.end_time > before[1]


def registered(raw: dict) -> dict:
    raw["promotion"] = {"enabled": False}
    return raw


@pytest.mark.slow
@pytest.mark.parametrize("where", ["while-logged", "before-its-version"])
def test_ctrl_c_while_the_model_is_logged_kills_the_run_and_leaves_no_pending_model(where, tmp_path, mlflow_store,
                                                                                    monkeypatch):
    """During `mlflow.pyfunc` logging ("Validating input example"): the pipeline run KILLED, not FINISHED; the logged
    model MLflow had created for the step run does not stay PENDING; the re-run registers the version, one model.
    The same once it is logged, before its version is made: it stayed READY without a version."""
    import mlflow.pyfunc

    from flows import registry
    from flows.pipeline_flow import pipeline_flow

    raw = registered(config(tmp_path, f"ctrl-c-registration-{where}", [
        {"name": "warm", "n_epochs": 1, "max_steps": 1, "train_vae": True},
        {"name": "flow", "n_epochs": 1, "max_steps": 1, "train_diff": True},
    ]))

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        if where == "while-logged":
            patch.setattr(mlflow.pyfunc, "save_model", ctrl_c)
        else:
            patch.setattr(registry, "ensure_registered_model", ctrl_c)
        interrupted_flow(raw)

    client = MlflowClient()
    name = f"ctrl-c-registration-{where}"
    experiment = client.get_experiment_by_name(name).experiment_id
    assert [r.info.status for r in pipeline_runs(name)] == ["KILLED"]
    assert [m.status.to_int() for m in client.search_logged_models([experiment])] == []  # none PENDING (1) or READY
    assert client.search_model_versions(f"name = '{name}'") == []

    pipeline_flow(raw)  # the steps are complete: registration only
    assert [r.info.status for r in pipeline_runs(name)] == ["FINISHED"]
    assert [str(m.status) for m in client.search_logged_models([experiment])] == ["READY"]
    assert [str(v.version) for v in client.search_model_versions(f"name = '{name}'")] == ["1"]


def test_ctrl_c_during_promotion_kills_the_pipeline_run(tmp_path, mlflow_store, monkeypatch):
    """Just after `Step flow is version N`: the pipeline run KILLED, not FINISHED."""
    from flows import promotion

    raw = config(tmp_path, "ctrl-c-promotion", [
        {"name": "warm", "n_epochs": 1, "max_steps": 1, "train_vae": True},
        {"name": "flow", "n_epochs": 1, "max_steps": 1, "train_diff": True},
    ])

    class CtrlC:
        def with_options(self, **options):
            return self

        def __call__(self, *args, **kwargs):
            raise KeyboardInterrupt

    monkeypatch.setattr(promotion, "promote_task", CtrlC())
    interrupted_flow(raw)

    assert [r.info.status for r in pipeline_runs("ctrl-c-promotion")] == ["KILLED"]
    assert [str(v.version) for v in MlflowClient().search_model_versions("name = 'ctrl-c-promotion'")] == ["1"]


@pytest.mark.parametrize("own_server", [False, True])
def test_ctrl_c_while_steps_run_says_at_once_that_they_stop_at_their_next_batch(tmp_path, mlflow_store, monkeypatch,
                                                                                run_step_calls, own_server):
    """Nothing was said until the running steps had stopped: up to 20 s when an evaluation was under way. On the
    run's own temporary server (fluxflow-train's default, where no GPU slot is asked) the training step was said to
    have "not started" and the run's summary recorded it "not run"."""
    from flows import pipeline_flow, step_task

    received, _ = run_step_calls
    if own_server:
        monkeypatch.setattr(step_task, "is_own_temporary", lambda url: True)

    def ctrl_c_once_it_trains(futures):  # the flow's wait for its running steps
        deadline = time.monotonic() + 60
        while "warm" not in received and time.monotonic() < deadline:
            time.sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline_flow, "as_completed", ctrl_c_once_it_trains)
    with run_log_lines() as said:
        interrupted_flow(config(tmp_path, "ctrl-c-while-steps-run"))
    assert "Stopping: the running steps (warm) save the batch they reached and stop; an evaluation or samples under " \
           "way finish first" in said, said
    assert not any("had not started" in line for line in said), said


def test_ctrl_c_stops_the_steps_before_the_runs_summary_is_published_and_a_failing_prefect_api_changes_nothing(
        tmp_path, mlflow_store, monkeypatch):
    """The summary was published in a finally of the steps' loop, which ran before the interrupt's handler: the steps
    trained on meanwhile, and a Prefect API that failed there replaced the interrupt, which then stopped no step and
    left the run FAILED."""
    from flows import artifacts, pipeline_flow
    from fluxflow.runtime.stop_request import stop_requested

    asked_to_stop: list[bool] = []

    def ctrl_c(futures):
        raise KeyboardInterrupt

    def prefect_down(*args, **kwargs):
        asked_to_stop.append(stop_requested())
        raise RuntimeError("the Prefect API is down")

    monkeypatch.setattr(pipeline_flow, "as_completed", ctrl_c)
    monkeypatch.setattr(artifacts, "publish_summary", prefect_down)
    raw = config(tmp_path, "ctrl-c-summary-fails")
    interrupted_flow(raw)  # the KeyboardInterrupt, not the Prefect API's error
    assert asked_to_stop == [True]
    assert [r.info.status for r in pipeline_runs(raw["tracking"]["experiment_name"])] == ["KILLED"]


@pytest.mark.slow
def test_ctrl_c_while_the_step_waits_for_the_gpu_slot_ends_the_run_at_once(tmp_path, mlflow_store, monkeypatch):
    """Another run's step held the `gpu` slot (a shared server's `gpu` limit of 1): Ctrl-C or SIGTERM of a run whose
    step waited for it did not end the run until that other step had ended (minutes here, hours on real training),
    and said that its step, which had not started, "saves the batch it reached". The stop now ends the wait: the
    run ends within seconds, says the step had not started, and the step wrote nothing."""
    from flows import pipeline_flow

    interrupted_at: list[float] = []

    def ctrl_c_while_waiting(futures):
        time.sleep(4)  # the step task asks for the slot, and is refused
        interrupted_at.append(time.monotonic())
        raise KeyboardInterrupt

    raw = config(tmp_path, "ctrl-c-waiting-for-the-gpu")
    monkeypatch.setattr(pipeline_flow, "as_completed", ctrl_c_while_waiting)
    with gpu_concurrency_limit(1), gpu_slot_held_elsewhere(release_after_s=60), run_log_lines() as said:
        interrupted_flow(raw)
        ended_s = time.monotonic() - interrupted_at[0]

    assert ended_s < 20, f"the run ended {ended_s:.0f} s after Ctrl-C"
    assert not any("running steps (warm)" in line for line in said), said
    assert any("warm had not started" in line for line in said), said
    assert not list((tmp_path / "out").rglob("*.pt"))
    assert [r.info.status for r in pipeline_runs(raw["tracking"]["experiment_name"])] == ["KILLED"]
