"""The flow `fluxflow-pipeline`: every step of the YAML one task, each receiving its parent's checkpoint reference.

Steps whose parent has finished are submitted at once, so branches (steps sharing a parent) run concurrently unless
a `gpu` tag concurrency limit serialises them. A step's outcome decides what runs next: `max_epochs_reached` on a
step with `on_missed: fail` stops its subtree and fails the flow; a failed task (after its retries) stops its subtree.
Other branches carry on either way, and the summary lists every step.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede prefect and mlflow)

import contextlib
import json
from dataclasses import replace
from datetime import timezone

from mlflow.tracking import MlflowClient
from prefect import flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from prefect.utilities.urls import url_for

from flows import artifacts
from flows.credentials import CredentialsError, mlflow_refusal, unreachable_reason
from flows.fault_policy import quiet_non_retryable_tracebacks
from flows.compare import pipeline_summary
from flows.mlflow_names import TAG_BRANCHES, TAG_CONFIG_HASH, TAG_LEAVES, TAG_OVERRIDES, TAG_STEPS
from flows.mlflow_runs import PipelineRun, StoreUnusable, TrackingTarget, find_step_runs, output_dir_of, \
    pipeline_name, prepare_store, resolve_tracking_uri, unusable_store
from flows.promotion import release_models
from flows.prefect_log_tracker import PrefectLogTracker
from flows.prefect_server import is_temporary
from flows.ray_steps import Infeasible, step_submitter
from flows.step_task import step_task
from flows.tracking_queue import TRACKING
from fluxflow.storage.store_lock import output_lock
from fluxflow.checkpoints.ref import StepOutcome
from fluxflow.checkpoints.step_key import json_sha256
from fluxflow.config import PipelineConfig
from fluxflow.config.dag import branch_names, leaf_names
from fluxflow.config.promotion import registered_steps
from fluxflow.config.run_config import resolve_run_config, run_dict
from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request, request_stop
from fluxflow.train.pipeline_schedule import PipelineSchedule, missed_threshold_message
from fluxflow.wording import counted

# How long an interrupted run waits for its running steps to save the batch they reached (one batch and a checkpoint
# write; docker stop allows 10 s by default, a Prefect worker's cancellation more).
STOP_GRACE_S = 60.0
# How long the end of the flow waits for MLflow records still queued while none goes out (an unreachable server):
# then the flow ends without them; re-running the same command completes the step runs from their files
# (flows/mlflow_step_run.py).
TRACKING_STALL_S = 30.0
# How long the flow's start waits for MLflow to open the pipeline's run when the server answered the probe (it then
# takes well under a second); past that the run trains on and the run is opened when the server answers.
OPEN_STALL_S = 15.0


def open_tracking(config: PipelineConfig, steps: list,
                  overrides: list[str] | None = None) -> tuple[PipelineRun, int | None]:
    """The pipeline's MLflow parent run, tagged with what links it to this flow run (and the `--set` overrides the
    run's config was given: each step run's params hold the resulting values), and the tracking queue's number of
    its opening, for `tracking_target` to wait on (None: the server did not answer, nothing to wait for). Opened
    through the tracking queue: a server that does not answer is said once, with where the records wait, and the run
    trains on. The opening is the call's last act: from its return on, the run is (or will be) RUNNING, and the
    caller closes it whatever happens (`run_steps`)."""
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    # Refused as `fluxflow-train` refuses it (a deployment run has no such check before the flow): one line, before
    # prepare_store makes a missing folder or MLflow fails with its traceback.
    unusable = unusable_store(uri, config.tracking.experiment_name)
    if unusable:
        raise StoreUnusable(unusable)
    prepare_store(uri)  # a new local store: a copy of an empty one, not MLflow's migrations (flows/mlflow_runs.py)
    client = MlflowClient(uri)
    output_dir, leaves = output_dir_of(config), set(leaf_names(steps))
    tags = {TAG_CONFIG_HASH: json_sha256(config.model_dump(mode="json"), 16, compact=False),
            TAG_STEPS: ",".join(step.name for step in steps), TAG_BRANCHES: ",".join(branch_names(steps)),
            TAG_LEAVES: json.dumps({step.name: step.hypothesis for step in steps if step.name in leaves}),
            "prefect.flow_run_id": str(flow_run.id or ""), "prefect.flow_run_name": str(flow_run.name or ""),
            TAG_OVERRIDES: json.dumps(list(overrides or []))}
    on_a_server = flow_run.id and not is_temporary(PREFECT_API_URL.value())  # the temporary one has no UI
    ui_url = url_for("flow-run", obj_id=flow_run.id) if on_a_server else None
    if ui_url:
        tags["prefect.flow_run_url"] = ui_url
    run = PipelineRun(client, config.tracking.experiment_name, output_dir, tags, config.model_dump(mode="json"))
    problem = unreachable_reason(uri)
    refused = None if problem else mlflow_refusal(uri)
    if refused:  # every call would be rejected (4xx) and dropped: a run without records is not what was asked for
        raise CredentialsError(refused)
    if problem:  # before the first call, which would otherwise sit in MLflow's retries (flows/tracking_queue.py)
        TRACKING.mark_unreachable(f"{uri}: {problem}", f"{output_dir}/graph and {output_dir}/samples, during this "
                                  "run or, if it ends first, for the next run of the same command to send",
                                  answers=lambda: unreachable_reason(uri) is None)
    opened = TRACKING.put(run.open)
    return run, None if problem else opened


def tracking_target(config: PipelineConfig, run: PipelineRun, opened: int | None) -> TrackingTarget:
    """Where the steps' runs go: waits (up to OPEN_STALL_S) for the parent run's opening; with the server not
    answering, the target has no ids yet (the steps' trackers find them when the server answers)."""
    if opened is not None:
        TRACKING.wait(opened, OPEN_STALL_S)
    return TrackingTarget(run.client.tracking_uri, run.experiment_id or "", run.run_id or "", str(flow_run.id or ""),
                          artifacts.artifact_key(pipeline_name(run.output_dir)), config.tracking.experiment_name)


def caught_up(run: PipelineRun, target: TrackingTarget, outcomes: list[StepOutcome]):
    """(target, outcomes) with the MLflow ids that were not known when they were made (the server did not answer at
    the flow's start or at a step's end, and has since); None while records still wait for the server."""
    if TRACKING.pending() or run.run_id is None:
        return None
    target = replace(target, experiment_id=run.experiment_id, parent_run_id=run.run_id)
    found = []
    for outcome in outcomes:
        if outcome.run_id is None:
            runs = find_step_runs(run.client, run.experiment_id, run.output_dir, outcome.ref.step_key,
                                  outcome.result.step_name)
            outcome = replace(outcome, run_id=runs[0].info.run_id if runs else None)
        found.append(outcome)
    return target, found


def run_day() -> str:
    """The flow run's scheduled start day (UTC, YYYY-MM-DD): what `{date}` in an output directory becomes
    (fluxflow/config/run_config.py), so a retry of a night's scheduled run resumes in that night's directory."""
    return flow_run.scheduled_start_time.astimezone(timezone.utc).strftime("%Y-%m-%d")


@flow(name="fluxflow-pipeline")
def pipeline_flow(config: str | dict, output_dir: str | None = None, device: str | None = None,
                  overrides: list[str] | None = None) -> list[dict]:
    """Train the pipeline declared by `config` (a YAML path, the config itself, or the config `fluxflow-train`
    resolved); returns each step's outcome. `output_dir` overrides the config's output directory; `{date}` in it is
    the run's scheduled day. `device` overrides `training.device`. `overrides`: `KEY=VALUE` changes of the config, as
    `fluxflow-train --set` (fluxflow/config/load.py). The config is resolved here, once
    (fluxflow/config/run_config.py); every task and the promotion receive it resolved."""
    # Failures the user must fix (flows/fault_policy.py), a refused config here included (a deployment run's file,
    # `overrides` or `output_dir`), are logged as their one-line problems, not under Prefect's engine's tracebacks.
    quiet_non_retryable_tracebacks()
    cfg = resolve_run_config(config, output_dir=output_dir, device=device, overrides=overrides or (),
                             day=run_day()).config
    if cfg.training.executor.kind == "local":  # on Ray the device is the cluster's (flows/ray_steps.py)
        from fluxflow.runtime.device import resolve_device  # torch: only once a flow runs

        # A device this machine lacks fails here, once, named where it was set (the `device` parameter of a
        # deployment run, else the file's field), as fluxflow-train's check does: not in the first step, after the
        # output directory was taken and the MLflow run opened, as the file's `training.device`.
        resolve_device(cfg.training.device, "device" if device else "training.device")
    # One run per output directory (a local flock, or a lock object on the object store: fluxflow/storage): a second
    # one fails at once, as with run_pipeline. The executor (local, or Ray: flows/ray_steps.py) is joined before
    # anything is tracked, so an unreachable cluster leaves no run behind.
    with output_lock(output_dir_of(cfg)), step_submitter(cfg) as steps_on:
        return run_steps(cfg, overrides, steps_on)


def run_steps(cfg: PipelineConfig, overrides: list[str] | None, steps_on) -> list[dict]:
    """Submit each step once its parent has finished, through `steps_on` (flows/ray_steps.py: this process's task
    runner, or Ray with the step's resources); its outcome decides whether its children run
    (fluxflow/train/pipeline_schedule.py). Returns each finished step's `StepOutcome.to_dict()`."""
    logger = get_run_logger()
    steps = cfg.resolved_steps()
    schedule = PipelineSchedule(steps)
    from fluxflow.train.pipeline import announce_skipped  # torch: only once a flow runs

    clear_stop_request()
    announce_skipped(cfg, PrefectLogTracker(flow_run.id, None))  # the flow run's own lines, in its log in the UI too
    pipeline_run, opened = open_tracking(cfg, steps, overrides)
    # From here on the parent run is RUNNING (a re-run reopens a FINISHED one): everything after, the wait for MLflow,
    # the steps, registration and promotion, is inside the try whose finally closes it, KILLED by an interrupt
    # wherever it lands.
    running: dict[str, object] = {}
    outcomes: list[StepOutcome] = []
    failed: list[str] = []  # the steps that failed after their retries
    status, sent, target = "FAILED", True, None
    try:
        target = tracking_target(cfg, pipeline_run, opened)
        progress = artifacts.start_progress(target.pipeline, len(steps))
        # A local step task takes the host's `gpu` slot itself (flows/gpu_slot.py; on Ray, Ray's resource accounting
        # replaces it). On Ray the output directory is handed on as an absolute path (or URI): the tasks run in Ray
        # workers, whose working directory is not this one.
        task = step_task.with_options(retries=cfg.training.pipeline.retries)
        if cfg.training.executor.kind == "ray":
            cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"output_path": output_dir_of(cfg)})})
        # Every task trains the config resolved at the flow's start, not the YAML file as it is when the task starts:
        # an edit of the file during the run changes nothing the flow planned and logged.
        resolved = run_dict(cfg)

        def submit(names: list[str], parent_ref: dict | None) -> None:
            for name in names:
                parameters = dict(config=resolved, step_name=name, parent_ref=parent_ref, tracking=target.to_dict())
                try:
                    running[name] = steps_on.submit(task, schedule.by_name[name], parameters)
                except Infeasible as exc:  # Ray would hold it pending forever: it fails now, its subtree is not run
                    logger.error(str(exc))
                    schedule.step_failed(name, exc, started=False)  # not in `failed`: it opened no MLflow run, and
                    # fluxflow-compare, which reads those, calls it "not run"; the summary says the same

        submit(schedule.roots(), None)
        while running:
            future = next(as_completed(list(running.values())))
            name = next(n for n, f in running.items() if f is future)
            del running[name]
            try:
                outcome = StepOutcome.from_dict(future.result())
            except Exception as exc:  # the task failed after its retries: stop this subtree only
                schedule.step_failed(name, exc)
                failed.append(name)
                continue
            outcomes.append(outcome)
            if outcome.placement():
                logger.info("step %s trained on %s", name, outcome.placement())
            artifacts.update_progress(progress, len(outcomes), len(steps))
            if outcome.result.outcome == "max_epochs_reached":
                logger.warning(missed_threshold_message(schedule.by_name[name]))
            submit(schedule.step_finished(name, outcome.result.outcome), outcome.ref.to_dict())
        status = "FAILED" if schedule.problems else "FINISHED"  # an error in registration does not change it
        schedule.raise_if_failed([outcome.to_dict() for outcome in outcomes])  # with them: fluxflow-train lists them
        sent = send_records(pipeline_run)  # the step runs' ids, for registration: every record queued so far sent
        tracked = caught_up(pipeline_run, target, outcomes) if sent else None
        if tracked is not None:
            release_models(cfg, resolved, tracked[1], tracked[0])  # register, then promote
        elif registered_steps(cfg):
            logger.warning("MLflow has not answered: registering the models and the champion/challenger decision wait "
                           "for the next run of the same command, which finds the steps complete and does them")
    except (KeyboardInterrupt, TerminationSignal):  # Ctrl-C / SIGTERM reach this (main) thread, the steps train in
        request_stop()  # task threads: they save their position at the next batch and stop, instead of finishing
        steps_on.stop()  # Ray tasks are in other processes: they are cancelled, and resume from their latest.pt
        status = "KILLED"
        # Said at once: an evaluation or samples under way kept the run silent for up to 20 s. Only the steps that
        # started have a batch to save; the others (waiting for the `gpu` slot, or not yet there) do not start.
        started = [name for name, future in running.items() if steps_on.started(future)]
        waiting = [name for name in running if name not in started]
        if started:
            logger.warning("Stopping: the running steps (%s) save the batch they reached and stop; an evaluation or "
                           "samples under way finish first", ", ".join(started))
        if waiting:
            logger.warning("Stopping: %s %s had not started: %s not start (nothing to save)",
                           "step" if len(waiting) == 1 else "steps", ", ".join(waiting),
                           "it does" if len(waiting) == 1 else "they do")
        for future in running.values():  # after SIGTERM Prefect ends the process as soon as this returns
            with contextlib.suppress(StepInterrupted, Exception):  # how the step ended; a 2nd Ctrl-C still goes
                future.wait(timeout=STOP_GRACE_S)
        for name in waiting:  # no MLflow run of theirs to end KILLED
            del running[name]
        raise
    finally:  # after registration and promotion: an interrupted one leaves the run KILLED, not FINISHED. Here, not in
        # a finally of the steps' loop, which ran before the interrupt's handler: the steps trained on meanwhile, and
        # a Prefect API that failed there replaced the interrupt, which then stopped no step.
        # the steps that started and did not finish, by their MLflow runs' status: those still running were stopped
        log_hypotheses(pipeline_run, steps, outcomes, {**dict.fromkeys(failed, "FAILED"),
                                                       **dict.fromkeys(running, "KILLED")})
        send_records(pipeline_run, status, TRACKING_STALL_S if sent else 0)
        if target is not None:  # last: the Prefect API failing here loses the summary, not the MLflow run's end
            try:
                rest = without_outcome(steps, outcomes, schedule, running)
                artifacts.publish_summary(target.pipeline, outcomes, rest)
            except Exception as exc:  # noqa: BLE001 - the record of what ran; the run's own outcome stands
                logger.warning("the run's summary could not be published to Prefect: %s", exc)
    return [outcome.to_dict() for outcome in outcomes]


def without_outcome(steps: list, outcomes: list[StepOutcome], schedule: PipelineSchedule, stopped) -> dict[str, str]:
    """Every step without an outcome -> how it ended, for the summary: `failed: ERROR`, `not run: a failed`,
    `interrupted` (`stopped`: the steps an interrupt stopped), else `not run` (an interrupt came first)."""
    ended = {**schedule.not_finished(), **dict.fromkeys(stopped, "interrupted")}
    done = {outcome.result.step_name for outcome in outcomes}
    return {**ended, **{step.name: "not run" for step in steps if step.name not in done and step.name not in ended}}


def log_hypotheses(run: PipelineRun, steps: list, outcomes: list[StepOutcome], ended: dict[str, str]) -> None:
    """The leaf steps' final metrics per hypothesis, with replicate spreads and pairwise differences
    (flows/hypotheses.py), on the pipeline's MLflow run: hypotheses.json and hypotheses.txt. `ended`: step name ->
    MLflow status of a step that started and did not finish (pipeline_summary)."""
    summary = pipeline_summary(steps, {o.result.step_name: o.result.final_metrics for o in outcomes}, ended)
    if summary is None:
        return
    TRACKING.put(lambda: run.client.log_dict(run.run_id, summary.to_dict(), "hypotheses.json"))
    TRACKING.put(lambda: run.client.log_text(run.run_id, summary.text(), "hypotheses.txt"))


def send_records(run: PipelineRun, status: str | None = None, stall_s: float = TRACKING_STALL_S) -> bool:
    """Wait until every record the steps and the flow queued (flows/tracking_queue.py) is sent, then, with `status`,
    the pipeline's MLflow run is closed; whether all went out. MLflow not answering for `stall_s` is said once (a
    second call after one that stalled passes 0: it neither waits nor says it again)."""
    last = TRACKING.put(lambda: run.terminate(status) if status else None)
    if TRACKING.wait(last, stall_s):
        return True
    if stall_s:
        get_run_logger().warning(
            "MLflow (%s) did not answer for %.0f s: %s not sent. The metrics are in graph/*.jsonl; run the "
            "same command again once it answers to complete the step runs.", run.client.tracking_uri,
            stall_s, counted(TRACKING.pending(), "record"))
    return False
