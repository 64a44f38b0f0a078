"""What a step's `latest.pt` holds: the original tool's checkpoint layout, plus what an exact resume needs."""
from __future__ import annotations

from fluxflow.checkpoints.rng_state import capture_rng_state
from fluxflow.checkpoints.step_state import StepState


def checkpoint_state(run, completed: bool = False) -> dict:
    """The checkpoint of a `StepRun` at its position: enough to resume exactly, and for fluxflow-generate on its
    own (the model sizes travel with the weights)."""
    t, pos, step, config = run.trainer, run.position, run.step, run.config
    latent_norm = t.ctx.latent_norm
    return {
        "epoch": pos.start_epoch + pos.epoch, "global_step": pos.global_step,
        "models": {n: m.state_dict() for n, m in t.models.items()},
        "optimizers": {g: o.state_dict() for g, o in t.optimizers.items()},
        "schedulers": {g: s.state_dict() for g, s in t.schedulers.items()},
        "ema": {n: e.state_dict() for n, e in t.emas.items()},
        "latent_norm": {k: v.cpu() for k, v in latent_norm.items()} if latent_norm else None,
        "expander_spade": t.ctx.spade,  # how every later decode runs the expander (config/modes.expander_spade)
        "model_config": config.model.model_dump(mode="json"),
        # The step's image size: generation from this checkpoint defaults to it (fluxflow/sampling/generate.py).
        "data": {**config.data.model_dump(mode="json"), "img_size": step.img_size},
        "pipeline_metadata": StepState(
            current_step=step.index, current_step_name=step.name, step_key=run.files.key,
            step_config=step.model_dump(mode="json"), seed=step.seed, step_start_epoch=pos.start_epoch,
            current_step_epoch=pos.epoch, batch=pos.batch, step_metrics=run.report.history, rng=capture_rng_state(),
            monitor=run.monitor.state_dict(), report=run.report.state_dict(), completed=completed,
            outcome=run.outcome,
        ).to_dict(),
    }
