"""Per-step optimizer and scheduler settings (`optimization:` of a step), without torch.

Every type is the class of `torch.optim` / `torch.optim.lr_scheduler` of the same name, and every parameter is its
keyword argument (except `eta_min_factor`, and the `interval` and `warmup_steps` every scheduler takes);
`fluxflow.train.optim` and `fluxflow.train.lr_schedule` build them from a resolved config.

`type` is optional in the file (None until resolved) so that a step can change one value of an optimizer inherited from
`pipeline.defaults` without restating its type; resolution fills the type and its torch defaults in.
"""
from __future__ import annotations

import math
import types
import typing
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidatorFunctionWrapHandler, model_serializer,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from fluxflow.config.errors import ConfigIssue

UnitFloat = Annotated[float, Field(ge=0.0, lt=1.0)]

# The optimizer types and the parameters each takes (besides lr), with the value used when a file leaves one out.
OPTIMIZER_PARAMS: dict[str, dict[str, Any]] = {
    # 0.1 is nanoGPT's value (DiT trains with 0): it goes with nanoGPT's split that decays only matrices and conv
    # kernels (fluxflow/train/param_groups.py). Decoupled decay shrinks a weight by lr x 0.1 per step, 1e-5 at 1e-4.
    "AdamW": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1, "amsgrad": False},
    "Adam": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
    "SGD": {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "RMSprop": {"alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False},
    "Adagrad": {"lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10},
    "Adadelta": {"rho": 0.9, "eps": 1e-6, "weight_decay": 0.0},
}

# One group's defaults over its type's. The discriminator's Adam/AdamW forget faster (betas 0.5, 0.9, as VQGAN's and
# most GANs' discriminators): with beta2 0.999 the second moment remembers each lazy R1 step's large gradient for
# ~1,000 updates, the hinge gradients between them move D by almost nothing, and D stays flat at d_loss 2.00
# (measured on digits after a VAE warm-up: docs/OPERATIONS.md, "A discriminator that does not learn").
GROUP_OPTIMIZER_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "discriminator": {"AdamW": {"betas": (0.5, 0.9)}, "Adam": {"betas": (0.5, 0.9)}},
}

# The scheduler types and the parameters each takes; None = no fixed default (see SchedulerConfig.resolved). The one
# place their defaults live: fluxflow/train/lr_schedule.py reads them from here.
SCHEDULER_PARAMS: dict[str, dict[str, Any]] = {
    "CosineAnnealingLR": {"eta_min_factor": 0.1},
    "StepLR": {"step_size": None, "gamma": 0.1},
    "MultiStepLR": {"milestones": None, "gamma": 0.1},
    "ExponentialLR": {"gamma": 0.9},
    "ReduceLROnPlateau": {"mode": "min", "factor": 0.1, "patience": 10, "threshold": 1e-4, "cooldown": 0,
                          "min_lr": 0.0},
    "LinearLR": {"start_factor": 1.0, "end_factor": 0.1, "total_iters": None},
    "ConstantLR": {"factor": 0.5, "total_iters": None},
}
# What every scheduler takes besides its own parameters: when it steps, and the linear warm-up before it.
SCHEDULE_PARAMS: dict[str, Any] = {"interval": "step", "warmup_steps": 0}
# ReduceLROnPlateau watches an epoch-end metric, so it always steps per epoch.
EPOCH_ONLY = ("ReduceLROnPlateau",)


class StrictModel(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored). Numbers are finite (no .nan/.inf), true/false
    is not a number (pydantic would read it as 1/0) and a whole number fits in 64 bits (torch, numpy): for every field
    of every model, in lists, tuples and mappings too."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="wrap")
    @classmethod
    def _numbers(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """A before-validator of every field (which a discriminator field, a dataset's `type`, cannot have). An
        unknown key's error gets this model's fields (ctx `fields`), for load.py's "did you mean"."""
        found = [(key, problem) for key, value in (data.items() if isinstance(data, dict) else ())
                 if key in cls.model_fields and (problem := number_problem(cls.model_fields[key].annotation, value))]
        errors = [InitErrorDetails(type=PydanticCustomError("number", message), loc=(key, *loc), input=value)
                  for key, (message, loc, value) in found]
        try:
            validated = handler(data)
        except ValidationError as exc:  # the other fields' problems: all are reported together
            others = [e for e in exc.errors() if e["loc"][:1] not in [(key,) for key, _ in found]]
            unknown = [e for e in others if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
            if not errors and not unknown:
                raise
            errors += [InitErrorDetails(type=PydanticCustomError(e["type"], e["msg"], {"fields": [*cls.model_fields]}
                                                                 if e in unknown else e.get("ctx")),
                                        loc=e["loc"], input=e["input"]) for e in others]
        if errors:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return validated


INT64 = 2**63
CONTAINERS = (list, tuple, dict)  # no union of a config model has two kinds of them as arms


def number_problem(annotation: Any, value: Any) -> tuple[str, tuple, Any] | None:
    """What is wrong with `value` as the number that `annotation` asks for: (message, where inside `value`, the
    wrong item), or None."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return number_problem(args[0], value)
    if origin in (typing.Union, types.UnionType):  # wrong for every arm that is a container if the value is one
        shaped = [arm for arm in args if (typing.get_origin(arm) in CONTAINERS) == isinstance(value, CONTAINERS)]
        found = [number_problem(arm, value) for arm in shaped if arm is not type(None)]
        return found[0] if found and all(found) else None
    if isinstance(value, bool) and (annotation in (int, float) or origin is Literal and value in args):  # True == 1
        return "must be a number, not true/false", (), value
    if annotation is int and isinstance(value, (int, float)) and not -INT64 <= value < INT64 and math.isfinite(value):
        return f"must fit in 64 bits (at most {INT64 - 1})", (), value
    items: list[tuple[Any, int | str, Any]] = []
    if origin in (list, tuple) and isinstance(value, (list, tuple)):
        item_types = [args[0]] * len(value) if origin is list or args[-1:] == (...,) else args
        items = [(kind, i, item) for i, (kind, item) in enumerate(zip(item_types, value))]
    elif origin is dict and isinstance(value, dict):
        items = [(args[1], key, item) for key, item in value.items()]
    for kind, at, item in items:
        if problem := number_problem(kind, item):
            return problem[0], (at, *problem[1]), problem[2]
    return None


class OmitsDefaults(StrictModel):
    """`OMITTED_AT_DEFAULT` fields are left out of dumps while at their default (absent = default, both ways), so that
    the step keys, config hashes, logged configs and checkpoints of runs made before those fields existed stay as
    they were."""
    OMITTED_AT_DEFAULT: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler):
        data = handler(self)
        for name in self.OMITTED_AT_DEFAULT:
            if getattr(self, name) == type(self).model_fields[name].get_default(call_default_factory=True):
                data.pop(name, None)
        return data


class OptimizerConfig(StrictModel):
    type: Literal[tuple(OPTIMIZER_PARAMS)] | None = None
    lr: float | None = Field(None, gt=0.0, le=1.0)
    betas: tuple[UnitFloat, UnitFloat] | None = None
    eps: float | None = Field(None, gt=0.0)
    weight_decay: float | None = Field(None, ge=0.0)
    momentum: UnitFloat | None = None
    dampening: float | None = Field(None, ge=0.0, le=1.0)
    nesterov: bool | None = None
    alpha: float | None = Field(None, gt=0.0, lt=1.0)
    centered: bool | None = None
    amsgrad: bool | None = None
    lr_decay: float | None = Field(None, ge=0.0)
    initial_accumulator_value: float | None = Field(None, ge=0.0)
    rho: float | None = Field(None, ge=0.0, le=1.0)

    def resolved(self, default_lr: float, group: str | None = None) -> "OptimizerConfig":
        """The same settings with type, lr and the defaults of the type (and of the optimizer group) filled in."""
        kind = self.type or "AdamW"
        group_defaults = GROUP_OPTIMIZER_PARAMS.get(group or "", {}).get(kind, {})
        values = {"lr": default_lr, **OPTIMIZER_PARAMS[kind], **group_defaults, **self.model_dump(exclude_none=True)}
        return OptimizerConfig(type=kind, **{k: v for k, v in values.items() if k in {"lr", *OPTIMIZER_PARAMS[kind]}})


class SchedulerConfig(StrictModel):
    """An lr schedule of one optimizer group: `warmup_steps` optimizer steps of linear warm-up, then the scheduler.

    `interval: step` (default) steps the scheduler after every optimizer step, so `step_size`, `milestones` and
    `total_iters` count optimizer steps; `interval: epoch` steps it at each epoch end, and they count epochs.
    CosineAnnealingLR anneals to `eta_min_factor` x the start lr over the step's optimizer steps after the warm-up
    (interval step) or over its epochs (interval epoch). `total_iters` of LinearLR and ConstantLR defaults to the same
    span. ReduceLROnPlateau watches the smoothed `transition_on.metric` at epoch ends (interval epoch only), so it
    needs a loss_threshold step.
    """

    type: Literal[tuple(SCHEDULER_PARAMS)] | None = None
    interval: Literal["step", "epoch"] | None = None
    warmup_steps: int | None = Field(None, ge=0)
    eta_min_factor: float | None = Field(None, ge=0.0, le=1.0)
    step_size: int | None = Field(None, ge=1)
    milestones: list[Annotated[int, Field(ge=1)]] | None = None
    gamma: float | None = Field(None, gt=0.0, le=1.0)
    start_factor: float | None = Field(None, gt=0.0, le=1.0)
    end_factor: float | None = Field(None, ge=0.0, le=1.0)
    total_iters: int | None = Field(None, ge=1)
    factor: float | None = Field(None, gt=0.0, le=1.0)
    mode: Literal["min", "max"] | None = None
    patience: int | None = Field(None, ge=0)
    threshold: float | None = Field(None, ge=0.0)
    cooldown: int | None = Field(None, ge=0)
    min_lr: float | None = Field(None, ge=0.0)

    def resolved(self, step_epochs: int) -> "SchedulerConfig":
        """Type and defaults filled in. `total_iters` defaults to `step_epochs` with interval epoch and no warm-up;
        otherwise it stays None here and is the span after the warm-up (the step's optimizer steps, or its epoch ends
        from the first one after it), known only when the step runs (fluxflow/train/lr_schedule.py). With a warm-up
        it was `step_epochs` too, as if the warm-up took no epoch: the schedule ended short of `end_factor`."""
        kind = self.type or "CosineAnnealingLR"
        defaults = {**SCHEDULE_PARAMS, "interval": "epoch"} if kind in EPOCH_ONLY else SCHEDULE_PARAMS
        values = {**defaults, **SCHEDULER_PARAMS[kind], **self.model_dump(exclude_none=True), "type": kind}
        if ("total_iters" in SCHEDULER_PARAMS[kind] and values["total_iters"] is None and values["interval"] == "epoch"
                and not values.get("warmup_steps")):
            values["total_iters"] = step_epochs
        takes = {"type", *SCHEDULE_PARAMS, *SCHEDULER_PARAMS[kind]}
        return SchedulerConfig(**{k: v for k, v in values.items() if k in takes})


class Optimization(StrictModel):
    """Optimizers and schedulers by group (vae, discriminator, flow, text_encoder)."""

    optimizers: dict[str, OptimizerConfig] = Field(default_factory=dict)
    schedulers: dict[str, SchedulerConfig] = Field(default_factory=dict)


def given_options(cfg: OptimizerConfig | SchedulerConfig | dict | None) -> dict[str, Any]:
    """The options an optimizer or scheduler config sets (a resolved model, or a plain mapping in tests)."""
    return {} if cfg is None else dict(cfg) if isinstance(cfg, dict) else cfg.model_dump(exclude_none=True)


def _not_taken(cfg: OptimizerConfig | SchedulerConfig, loc: tuple, kind: str, takes: list[str]) -> list[ConfigIssue]:
    """The parameters `cfg` sets that its type `kind` does not take (it takes `takes`)."""
    return [ConfigIssue((*loc, name), f"'{name}' is not a parameter of {kind} (it takes: {', '.join(takes)})")
            for name in sorted(cfg.model_fields_set - {"type", *takes}) if getattr(cfg, name) is not None]


def optimizer_issues(cfg: OptimizerConfig, loc: tuple) -> list[ConfigIssue]:
    """Parameters that the optimizer type does not take, and combinations torch refuses."""
    kind = cfg.type or "AdamW"
    issues = _not_taken(cfg, loc, kind, ["lr", *OPTIMIZER_PARAMS[kind]])
    if kind == "SGD" and cfg.nesterov and ((cfg.momentum or 0.0) <= 0.0 or (cfg.dampening or 0.0) != 0.0):
        issues.append(ConfigIssue((*loc, "nesterov"), "nesterov needs momentum > 0 and dampening 0"))
    return issues


def scheduler_issues(cfg: SchedulerConfig, loc: tuple) -> list[ConfigIssue]:
    kind = cfg.type or "CosineAnnealingLR"
    issues = _not_taken(cfg, loc, kind, [*SCHEDULER_PARAMS[kind], *SCHEDULE_PARAMS])
    if kind == "StepLR" and cfg.step_size is None:
        issues.append(ConfigIssue((*loc, "step_size"), "required for StepLR (in optimizer steps, or epochs with "
                                  "interval: epoch)"))
    if kind == "MultiStepLR" and not cfg.milestones:
        issues.append(ConfigIssue((*loc, "milestones"), "required for MultiStepLR: a list of optimizer "
                                  "steps (or epochs with interval: epoch) at which the lr is multiplied by gamma"))
    if kind in EPOCH_ONLY and cfg.interval == "step":
        issues.append(ConfigIssue((*loc, "interval"), f"{kind} steps at epoch ends with the watched "
                                  "metric; use interval: epoch (or leave it out)"))
    if kind == "ReduceLROnPlateau" and cfg.factor is not None and cfg.factor >= 1.0:
        issues.append(ConfigIssue((*loc, "factor"), "must be < 1 for ReduceLROnPlateau"))
    return issues
