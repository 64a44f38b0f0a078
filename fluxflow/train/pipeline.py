"""The whole pipeline without an orchestrator: every step in DAG order, in this process.

The Prefect flow (flows/pipeline_flow.py) runs the same steps as tasks; this is the bare path used by benchmarks,
by tests of the core, and by anyone who wants the trainer without Prefect or MLflow.
"""
from __future__ import annotations

import logging

from fluxflow.checkpoints.ref import StepOutcome
from fluxflow.checkpoints.step_files import plan_step
from fluxflow.config.dag import execution_order
from fluxflow.output_layout import checkpoints_dir
from fluxflow.errors import is_retryable
from fluxflow.runtime.launch import run_step_on_processes
from fluxflow.runtime.stop_request import clear_stop_request
from fluxflow.runtime.torch_threads import settle_threads
from fluxflow.storage.location import output_root
from fluxflow.storage.store_lock import output_lock
from fluxflow.train.pipeline_schedule import PipelineSchedule
from fluxflow.train.step_run import run_step
from fluxflow.train.tracking import runner_line

log = logging.getLogger("fluxflow.train.pipeline")


def completed_steps(config) -> list[str]:
    """Steps whose final.pt exists for their current key and was trained from their parent's final.pt as it is
    (they will be skipped), in execution order. A step below one that is not complete is not listed: whether it is
    reused depends on the checkpoint its parent is about to make."""
    refs: dict = {}
    for step in execution_order(config.resolved_steps()):
        if step.parent and step.parent not in refs:
            continue
        files = plan_step(config, step.name, refs.get(step.parent))
        files.pull_ref()  # an output on an object store: its ref.json, which says whether the step is complete
        done = files.completed_here_or_set_aside()
        if done is not None:
            refs[step.name] = done.ref
    return list(refs)


def announce_skipped(config, tracker=None) -> None:
    """The original tool's "Skipping steps: ..." line, when some steps are already complete (each then says where);
    and the step folders of the output directory that no step of this config uses (a renamed or removed step).
    Printed, and handed to `tracker` (a run's log elsewhere: the Prefect UI)."""
    skipping = completed_steps(config)
    if skipping:
        runner_line(tracker, f"Skipping steps: {', '.join(skipping)}")
    names = {step.name for step in config.resolved_steps()}
    unused = sorted(p for p in checkpoints_dir(output_root(config)).glob("*") if p.is_dir() and p.name not in names)
    if unused:
        runner_line(tracker, f"Not steps of this config, left as they are: {', '.join(str(p) for p in unused)}")


def run_pipeline(config, tracker=None) -> list[StepOutcome]:
    """Every step in DAG order, in this process; returns their outcomes. A failing step stops only its subtree
    (fluxflow/train/pipeline_schedule.py, the flow's rule): the other branches run, then PipelineFailed names every
    problem. An interrupt stops everything at once."""
    with output_lock(config.output.output_path):  # a local flock, or a lock object on the store
        # A request belongs to the run it interrupted (an interrupted flow in this process leaves it set), not to
        # this one, which stopped at its first batch with nothing said: as the flow does at its start.
        clear_stop_request()
        announce_skipped(config, tracker)
        steps = config.resolved_steps()
        schedule = PipelineSchedule(steps)
        outcomes: dict[str, StepOutcome] = {}
        for step in execution_order(steps):
            if step.name in schedule.not_run:
                continue
            parent = outcomes[step.parent].ref if step.parent else None
            try:
                outcomes[step.name] = train_step(config, step.name, parent, tracker)
            except Exception as exc:  # KeyboardInterrupt (and StepInterrupted) is no Exception: it stops the run
                # A non-retryable error's message names the file and what to do: no traceback to bury it.
                log.error("Step %s failed: %s", step.name, exc, exc_info=is_retryable(exc))
                schedule.step_failed(step.name, exc)
                continue
            schedule.step_finished(step.name, outcomes[step.name].result.outcome)
        schedule.raise_if_failed()
        return list(outcomes.values())


def train_step(config, step_name: str, parent, tracker=None, ranks_done=None) -> StepOutcome:
    """The step on its processes, the one call of the bare pipeline and the Prefect task: in this process when it
    has one, else on its ranks (torchrun on one node, Ray Train across nodes: fluxflow/runtime/launch.py). Ranks
    cannot reach `tracker`; rank 0 writes the console lines and metrics file, and `ranks_done(outcome)` is called
    once a step they trained is done (the Prefect task records it in MLflow from those files). Files of the step's
    current key that an earlier run set aside are moved back first, here, before any rank looks for them."""
    settle_threads()  # this thread's torch thread count: the process's, not an evaluation's one (runtime/torch_threads)
    plan_step(config, step_name, parent).reuse_set_aside(lambda line: runner_line(tracker, line))
    if config.training.distributed.processes == 1:
        return run_step(config, step_name, parent, tracker=tracker)
    outcome = run_step_on_processes(config, step_name, parent)
    if ranks_done is not None and outcome.result.trained:
        ranks_done(outcome)
    return outcome
