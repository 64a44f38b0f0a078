"""A step's own part of its checkpoint (`pipeline_metadata`): which step wrote it, where in the step it stands, and
what an exact resume needs beyond the weights.

The key names are the original tool's checkpoint format (docs/ARCHITECTURE.md, "Checkpoint format"), kept as they
are; this type is the one place that knows them. `of_checkpoint` reads what any version of this product wrote: a key an
older checkpoint lacks takes its default, so such a checkpoint still loads as a parent (it is never resumed from: its
`step_key` differs).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from types import SimpleNamespace
from typing import Any

from fluxflow.config.modes import PRIMARY_MODES, trained_components


@dataclass
class StepState:
    current_step: int = 0  # the step's index in the pipeline
    current_step_name: str = ""
    step_key: str = ""  # fluxflow/checkpoints/step_key.py: a resume is from a latest.pt of the same key only
    step_config: dict = field(default_factory=dict)  # the resolved step, to say what changed when the key differs
    seed: int = 0
    step_start_epoch: int = 0  # the pipeline epoch at which the step began
    current_step_epoch: int = 0  # the step's completed epochs
    batch: int = 0  # completed batches of the running epoch
    step_metrics: dict = field(default_factory=dict)  # {step name: {metric: [mean per log interval]}}
    rng: dict | None = None  # fluxflow/checkpoints/rng_state.py
    monitor: dict | None = None  # TransitionMonitor.state_dict()
    report: dict | None = None  # StepReport.state_dict(): the counts a step reports continue after a resume
    # Trainer.last_lr: the lr of each group's latest update, which every log line reports until the next update (a
    # resume inside an accumulation window logs it too); {} before the step's first update, or written before it was
    # saved (such a resume logs no lr_<group> until its first update).
    last_lr: dict = field(default_factory=dict)
    # Saved at an epoch's end before that end's samples and evaluation were made (fluxflow/train/step_run.py,
    # end_epoch): a resume makes them before it trains on. False once a later save passed them; read on resume only.
    epoch_end_due: bool = False
    # Saved at a mid-epoch checkpoint before that batch's samples were made (fluxflow/train/step_run.py, after_batch):
    # a resume makes them before it trains on. False once a later save passed them; read on resume only.
    batch_samples_due: bool = False
    completed: bool = False  # the step's last epoch is saved: only final.pt is left to write
    outcome: str | None = None  # the transition outcome, once completed
    # What ref.json records for a finished step, here for one in progress: the sha256 of the checkpoint it started
    # from (a replaced input sets its latest.pt aside, as its final.pt), and its key inputs (to say what changed).
    input_sha256: str | None = None
    key_inputs: dict | None = None
    # What the step's training data is (StepData.identity: a folder's item count and listing hash, a webdataset's
    # shard count and the hash of their files; None where the config alone fixes it): a latest.pt saved on other data
    # is set aside, as on another input.
    data_identity: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies, and `rng` and `report` hold tensors.
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def of_checkpoint(cls, state: dict | None) -> StepState:
        """The step state of a loaded checkpoint (empty for none)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in ((state or {}).get("pipeline_metadata") or {}).items() if k in known})


def saved_expander_spade(state: dict | None) -> bool:
    """Whether the checkpoint's expander decodes with SPADE (`expander_spade`, fluxflow.config.modes.expander_spade).
    Checkpoints written before it was carried say it through their own step's train_spade."""
    state = state or {}
    if "expander_spade" in state:
        return bool(state["expander_spade"])
    return bool(StepState.of_checkpoint(state).step_config.get("train_spade", False))


def saved_flow_shift(state: dict | None) -> float:
    """The timestep shift the checkpoint's flow was trained with (SD3's shift, t_shift scaled to the step's images),
    which its sampler follows; 1.0 (a uniform schedule) for a checkpoint written before it was recorded, as those
    sampled."""
    return float((state or {}).get("flow_shift", 1.0))


def saved_latent_norm_remeasure(state: dict | None) -> bool:
    """Whether the checkpoint's latent normalisation was measured on a compressor that has changed since, so that the
    next flow step measures again (fluxflow/train/step_run.py, StepRun._latent_norm). Checkpoints written before it
    was recorded say it through their own step's trained components."""
    state = state or {}
    if "latent_norm_remeasure" in state:
        return bool(state["latent_norm_remeasure"])
    written_by = StepState.of_checkpoint(state).step_config
    modes = SimpleNamespace(**({mode: False for mode in PRIMARY_MODES} | written_by))
    return bool(written_by) and "compressor" in trained_components(modes)
