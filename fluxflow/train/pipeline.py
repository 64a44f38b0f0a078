"""The whole pipeline without an orchestrator: every step in DAG order, in this process.

The Prefect flow (flows/pipeline_flow.py) runs the same steps as tasks; this is the bare path used by benchmarks,
by tests of the core, and by anyone who wants the trainer without Prefect or MLflow.
"""
from __future__ import annotations

from pathlib import Path

from fluxflow.checkpoints.ref import StepOutcome
from fluxflow.runtime.launch import run_step_distributed
from fluxflow.checkpoints.lock import RunLock
from fluxflow.train.step_run import run_step
from fluxflow.checkpoints.step_files import execution_order, plan_step


def completed_steps(config) -> list[str]:
    """Steps whose final.pt exists for their current key (they will be skipped), in execution order."""
    return [s.name for s in execution_order(config.resolved_steps())
            if plan_step(config, s.name).completed() is not None]


def announce_skipped(config) -> None:
    """The seed's "Skipping steps: ..." line, when some steps are already complete (each then says where)."""
    skipping = completed_steps(config)
    if skipping:
        print(f"Skipping steps: {', '.join(skipping)}", flush=True)


def run_pipeline(config, tracker=None, device: str | None = None) -> list[StepOutcome]:
    out = Path(config.output.output_path)
    out.mkdir(parents=True, exist_ok=True)
    with RunLock(out):
        announce_skipped(config)
        outcomes: dict[str, StepOutcome] = {}
        for step in execution_order(config.resolved_steps()):
            parent = outcomes[step.parent].ref if step.parent else None
            nproc = config.training.distributed.nproc_per_node
            if nproc > 1:
                outcomes[step.name] = run_step_distributed(config, step.name, parent, nproc, device=device)
            else:
                outcomes[step.name] = run_step(config, step.name, parent, tracker=tracker, device=device)
            if outcomes[step.name].result.outcome == "max_epochs_reached" and step.on_missed == "fail":
                raise RuntimeError(f"step {step.name} missed its transition threshold within max_epochs "
                                   "(on_missed: fail)")
        return list(outcomes.values())
