"""One pipeline step as one Prefect task: resolve the input, call the step runner, publish the outputs.

Only JSON goes in and out (the config the flow resolved at its start, as a dict: never a path the task would read
again; the parent's checkpoint reference as a dict, the tracking target; the step's reference and result as dicts):
no tensors or modules between tasks, so a task can run in another process or on another machine. A retry is a fresh
call of the same function: the step runner finds the step's `latest.pt` and resumes mid-step, and the MLflow tracker
reopens the same nested run.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede prefect and mlflow)

import contextlib
import json
from typing import Any

from mlflow.tracking import MlflowClient
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.settings import PREFECT_API_URL

from flows import together
from flows.artifacts import mlflow_run_url, publish_step
from flows.fault_policy import retry_unless_non_retryable
from flows.gpu_slot import gpu_slot, working
from flows.prefect_server import is_own_temporary
from flows.mlflow_tracker import MlflowTracker
from flows.prefect_log_tracker import PrefectLogTracker
from flows.mlflow_names import TAG_HOSTNAME, TAG_RAY_NODE, TAG_WORKERS
from flows.mlflow_runs import TrackingTarget, output_dir_of, step_context_params
from fluxflow.checkpoints.ref import CheckpointRef, StepNode, StepOutcome
from fluxflow.config import PipelineConfig
from fluxflow.config.run_config import run_config_of
from fluxflow.storage.location import output_root
from fluxflow.train.tracking import ConsoleJsonlTracker, MultiTracker


def make_tracker(config: PipelineConfig, target: TrackingTarget, node: StepNode | None = None,
                 step_name: str | None = None):
    """The step's trackers: the core's console + JSONL one, the MLflow one (tagged with the step's node, where an
    executor chose one; with the model's and `step_name`'s dataset's values as params of a new run), and, in a
    Prefect task run, the one that puts the console lines in the run's log. Returns (tracker, mlflow_tracker)."""
    mlflow_tracker = MlflowTracker(
        MlflowClient(target.tracking_uri), target.experiment_id, target.parent_run_id, output_dir_of(config),
        session=target.session, experiment_name=target.experiment_name or config.tracking.experiment_name,
        tags={TAG_RAY_NODE: node.node_id, TAG_HOSTNAME: node.hostname} if node else None,
        params=step_context_params(config, config.step(step_name)) if step_name else None)
    console = ConsoleJsonlTracker(output_root(config))  # local: an object store's staging mirror
    run = TaskRunContext.get()  # None: the step called without Prefect
    prefect_log = [PrefectLogTracker(run.task_run.flow_run_id, run.task_run.id)] \
        if run is not None and run.task_run.flow_run_id is not None else []
    return MultiTracker([console, mlflow_tracker, *prefect_log]), mlflow_tracker


def workers_tags(workers: tuple[StepNode, ...]) -> dict[str, str]:
    """The step run's tag of where a step across nodes trained: each rank's node, by rank (none on one node)."""
    return {TAG_WORKERS: json.dumps([w.to_dict() for w in workers])} if workers else {}


def run_step_task(config: dict, step_name: str, parent_ref: dict | None, tracking: dict) -> dict[str, Any]:
    """The body of `step_task` as a plain function (callable without Prefect): the step trained with its MLflow run
    (KILLED when it stopped on request, FAILED when it failed); returns its `StepOutcome.to_dict()`, its MLflow run
    filled in. `config`: the run's resolved config (fluxflow/config/run_config.py, `run_dict`)."""
    config = run_config_of(config)
    target = TrackingTarget(**tracking)
    parent = CheckpointRef.from_dict(parent_ref) if parent_ref else None
    node, on_cancel, slot = None, contextlib.nullcontext(), contextlib.nullcontext()
    run = TaskRunContext.get()  # None: the step called without Prefect
    if config.training.executor.kind == "ray":  # this is a Ray task: say where Ray placed it
        from flows.ray_node import cancel_stops_at_a_batch, current_node, use_assigned_cpus

        node, on_cancel = current_node(), cancel_stops_at_a_batch()
        use_assigned_cpus()
        print(f"Step {step_name} runs on {node}", flush=True)
    # One step at a time on this host's GPU(s), where a `gpu` limit says so (on Ray: Ray's). Not asked of this
    # process's own temporary server, which has no limit: its requests cost each step about a second at the start;
    # there the step is only marked as working, for a stop to say it saves its batch.
    elif run is not None:
        slot = working(run.task_run.id) if is_own_temporary(PREFECT_API_URL.value()) else \
            gpu_slot(f"Step {step_name}", run.task_run.id)
    with on_cancel, slot:
        together.meet(step_name)  # test-only: branches that must be running at the same time
        from fluxflow.train.pipeline import train_step

        tracker, mlflow_tracker = make_tracker(config, target, node, step_name)
        prefect_log = next((t for t in tracker.trackers if isinstance(t, PrefectLogTracker)), None)
        try:
            # A step of several processes (on Ray, its node holds their GPUs for it): MLflow gets rank 0's files once
            # the step is done, since the ranks cannot reach this process's tracker.
            with prefect_log.core_warnings() if prefect_log else contextlib.nullcontext():
                done = train_step(config, step_name, parent, tracker, ranks_done=lambda done: (
                    mlflow_tracker.record_from_files(config.step(step_name), done.ref.step_key, done.ref, done.result,
                                                     tags=workers_tags(done.workers))))
        except KeyboardInterrupt:  # stopped on request (or Ctrl-C): resumable, not a failure of the step
            mlflow_tracker.step_failed(status="KILLED")
            raise
        except BaseException:
            mlflow_tracker.step_failed()
            raise
        ref, result = done
        if not result.trained:
            mlflow_tracker.step_skipped(config.step(step_name), ref, result)
        mlflow_tracker.flush()  # bounded: an unreachable MLflow gets the records later, the step's outcome stands
        run_id = mlflow_tracker.run_id
        run_url = mlflow_run_url(target.tracking_uri, mlflow_tracker.experiment_id, run_id) if run_id else None
        outcome = StepOutcome(ref, result, run_id=run_id, run_url=run_url, node=node, workers=done.workers)
        publish_step(target.pipeline, outcome)
        return outcome.to_dict()


# Results stay in memory (NO_CACHE, not persisted): resuming is the runner's job, keyed by the checkpoint files, and a
# Prefect cache would return a stale reference after the files change. No retry for a failure that would only repeat
# itself (flows/fault_policy.py); how many retries is the flow's (flows/pipeline_flow.py). No `gpu` tag: the task takes
# the host's GPU slot itself, so that a stop ends its wait (flows/gpu_slot.py).
step_task = task(name="pipeline-step", task_run_name="{step_name}", cache_policy=NO_CACHE, persist_result=False,
                 retry_condition_fn=retry_unless_non_retryable)(run_step_task)
