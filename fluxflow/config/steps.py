"""Pipeline steps: what a step may say in the file, the fully resolved step the trainer runs, and seed replicates.

A step's value comes from, highest first: the step itself, `training.pipeline.defaults` (deep-merged under it),
the globals of `training` (batch_size, workers, lr, n_epochs, max_steps, seed, precision; the pipeline's default
dataset), and the defaults of `StepSettings` below. In the file every field is optional and None means "inherit";
`ResolvedStep` is concrete.

Deep merge: mappings merge key by key, lists and scalars of the step replace those of the defaults. A block whose
`type` (optimizer, scheduler) or `mode` (transition_on) differs from the inherited one replaces it whole, so that
parameters of another type are not inherited.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, create_model, field_validator

from fluxflow.config import modes
from fluxflow.config.dag import descendants
from fluxflow.config.errors import STEPS, ConfigError, ConfigIssue, did_you_mean
from fluxflow.config.executor import StepResources
from fluxflow.config.optim import INT64, OmitsDefaults, Optimization, OptimizerConfig, StrictModel


def _workers(value: Any) -> Any:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError("must be a number of worker processes (0 or more) or 'auto'")


# A seed of the data order, weights and noise: numpy's SeedSequence takes no negative one, torch none past 2**63.
Seed = Annotated[int, Field(ge=0, lt=INT64)]


# DataLoader worker processes per training process; "auto": fluxflow/data/__init__.py resolve_workers.
Workers = Annotated[int | Literal["auto"], BeforeValidator(_workers)]
# SD3's timestep shift s: t -> s·t / (1 + (s − 1)·t) for training's draws (fluxflow/losses/flow.py) and the sampler's
# float32 schedule (fluxflow/models/flow_sampler.py sigma_schedule), as written (`t_shift`) and as trained at the
# step's size (`resolution_shift`). s moves the median timestep 0.5 to s / (1 + s): at these bounds to 0.999 or
# 0.001, nearly all of training at one end. Past them the float32 schedule breaks down: above 1e3 steps of a
# 1,000-step schedule round to the same time (at 1e6 half of them); below 1e-3 its start drifts off 1 (1 + (s − 1)·1
# cancels: 1.00001 at 1e-3, 0.84 at 1e-7, inf at 1e-8, and training's loss, the samples and the evaluation go nan);
# above ~3.4e38 s itself is inf.
SHIFT_RANGE = (1e-3, 1e3)


def shift_range_problem(shift: float) -> str | None:
    """Why a timestep shift is refused (None: it is in SHIFT_RANGE)."""
    low, high = SHIFT_RANGE
    if low <= shift <= high:  # False for nan too
        return None
    return (f"must be between {low:g} and {high:g}: a shift s moves the median timestep 0.5 to s / (1 + s), and past "
            f"these bounds the sampler's float32 schedule degenerates (inf/nan below ~1e-7)")


def _shift(value: float) -> float:
    if problem := shift_range_problem(value):
        raise ValueError(problem)
    return value


def resolution_shift(shift: float, img_size: int, base_size: int | None) -> float:
    """SD3's resolution-dependent shift: a larger image keeps more of its signal at the same t, so t is shifted by
    sqrt(pixels / base pixels) = img_size / base_size (square images) on top of `shift`. No base size: `shift`."""
    return shift if base_size is None else shift * img_size / base_size


Shift = Annotated[float, AfterValidator(_shift)]
# Autocast of training (fluxflow/runtime/device.py autocast_dtype): auto = bf16 on CUDA that computes in it, else fp32.
Precision = Literal["auto", "fp32", "bf16"]

# Step fields added after steps were first keyed, at the value that trains as before they existed: at that value a
# field is left out of the step key (fluxflow/checkpoints/step_files.py), so that steps trained before it keep their
# keys instead of retraining.
# img_size: steps trained at data.img_size, which no key held; at the default 32 they keep their keys, at another
# size they retrain once, and from then on any change of a step's size (its own or data.img_size) retrains it.
KEY_NEUTRAL_VALUES: dict[str, Any] = {
    "seed": 0, "t_logit_mean": 0.0, "t_logit_std": 1.0, "t_shift": 1.0, "t_shift_base_size": None,
    "loss_weighting": "none", "min_snr_gamma": 5.0, "img_size": 32,
}
# Moving-average window (in batches) over which a loss_threshold metric is smoothed before comparing.
TRANSITION_WINDOW = 20


class Transition(StrictModel):
    """When a step ends. `epoch`: after n_epochs. `loss_threshold`: when the moving average of `metric` over the last
    `window` batches is below `threshold` (checked at each epoch end), or after `max_epochs` (default n_epochs)."""

    mode: Literal["epoch", "loss_threshold"] | None = None
    metric: str | None = None
    threshold: float | None = None
    max_epochs: int | None = Field(None, ge=1)
    window: int | None = Field(None, ge=1)


class StepSettings(StrictModel):
    """Every setting of a step, with its built-in default: the one list of step fields (those without a default are
    the step globals of `training`)."""

    n_epochs: int = Field(ge=1)
    train_vae: bool = False
    train_spade: bool = False
    gan_training: bool = False
    use_lpips: bool = False
    train_diff: bool = False
    train_diff_full: bool = False
    freeze: list[str] = Field(default_factory=list)
    unfreeze: list[str] = Field(default_factory=list)
    kl_beta: float = Field(1e-4, ge=0.0)
    kl_warmup_steps: int = Field(0, ge=0)
    kl_free_bits: float = Field(0.0, ge=0.0)
    lambda_adv: float = Field(0.5, ge=0.0)
    lambda_lpips: float = Field(0.1, ge=0.0)
    recon_l1_weight: float = Field(1.0, ge=0.0)
    recon_mse_weight: float = Field(1.0, ge=0.0)
    r1_gamma: float = Field(1.0, ge=0.0)
    r1_interval: int = Field(16, ge=1)
    adaptive_adv_weight: bool = False
    # The image-statistics regularisers (fluxflow/losses/image_stats.py): off; the weights apply once switched on.
    train_colorstats: bool = False
    train_histogram: bool = False
    train_contrast: bool = False
    train_coarseness: bool = False
    lambda_colorstats: float = Field(0.1, ge=0.0)
    lambda_histogram: float = Field(0.1, ge=0.0)
    lambda_contrast: float = Field(0.05, ge=0.0)
    lambda_coarseness: float = Field(1.0, ge=0.0)
    cfg_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    uniform_t_share: float = Field(0.1, ge=0.0, le=1.0)
    # The flow objective's timestep draw and loss weighting (fluxflow/losses/flow.py FlowObjective).
    t_logit_mean: float = 0.0
    t_logit_std: float = Field(1.0, gt=0.0)
    t_shift: Shift = 1.0  # in SHIFT_RANGE, also once scaled to the step's size (load.py _shift_issues)
    t_shift_base_size: int | None = Field(None, ge=1)  # set: t_shift is scaled by img_size / t_shift_base_size (SD3)
    loss_weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: float = Field(5.0, gt=0.0)
    ema_decay: float = Field(0.999, ge=0.0, lt=1.0)
    # Max total gradient norm of one update (all its optimizer groups); 0 = no clipping. 1.0: the original tool's
    # initial_clipping_norm.
    grad_clip: float = Field(1.0, ge=0.0)
    gradient_accumulation_steps: int = Field(1, ge=1)
    optimization: Optimization = Field(default_factory=Optimization)
    transition_on: Transition = Field(default_factory=Transition)
    on_missed: Literal["continue", "fail"] = "continue"
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(ge=1)
    workers: Workers
    lr: float = Field(gt=0.0, le=1.0)
    dataset: str
    eval_interval: int | None = Field(None, ge=1)
    # What the step asked for (None: the default, on where valid); whether a cache is used is
    # fluxflow/config/caching.py's answer. Caches change no number, so the step key leaves them out.
    cache_latents: bool | None = None
    cache_text: bool | None = None
    seed: Seed  # data order, fresh weights and noise of the step
    # A VAE warm-up may take bf16 on a CPU, where it is faster, and a flow step fp32, where bf16 is not
    # (docs/PERFORMANCE.md, "bf16 on CPU").
    precision: Precision
    img_size: int = Field(ge=8)  # the side of the images the step trains, evaluates and samples at
    # What a Ray executor reserves for the step (fluxflow/config/executor.py): where it may run, not what it trains,
    # so not part of the step key.
    resources: StepResources = Field(default_factory=StepResources)


# What `training.pipeline.defaults` (merged under every step) and a step may say: StepSettings with every field
# optional (None = not given here: inherit); a given value keeps its constraints.
StepDefaults = create_model("StepDefaults", __base__=StrictModel, __module__=__name__, **{
    key: (Optional[Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation], None)
    for key, info in StepSettings.model_fields.items()})


class StepConfig(StepDefaults):
    """One entry of `training.pipeline.steps` as written."""

    name: str
    after: str | None = None
    description: str | None = None


class ResolvedStep(OmitsDefaults, StepSettings):
    """A step with every default applied: what the trainer runs. `model_dump()` is the step's resolved config."""

    OMITTED_AT_DEFAULT = ("resources",)  # absent = none asked for (also in step runs, params and ref.json)

    index: int
    name: str
    parent: str | None
    # The written step this one trains: its own name, or for a seed replicate the step it replicates
    # (replicate_steps below). A label: not part of the step key.
    hypothesis: str
    # Whether an optimizer of the step trains at its `lr` (one that sets no lr of its own): known only where the
    # optimizers are resolved, which fills in their lr. Not a config field (not dumped, not in the key).
    _lr_read: bool | None = PrivateAttr(None)

    @property
    def lr_read(self) -> bool:
        # Unknown for a step made otherwise than by resolve_step (a dump validated again): a guess would change the
        # step's weights key between processes, so it fails loudly instead.
        if self._lr_read is None:
            raise RuntimeError(f"step {self.name!r} was not made by resolve_step: whether it reads its lr is unknown")
        return self._lr_read


# training.<key> that steps inherit as their <key>; with the pipeline's default dataset and data.img_size they are the
# step globals (PipelineConfig.written_steps, and load.py's lenient ones where the file did not parse).
TRAINING_GLOBALS = ("batch_size", "workers", "lr", "n_epochs", "max_steps", "seed", "precision")


def deep_merge(base: dict[str, Any], override: dict[str, Any], kind_key: str = "type") -> dict[str, Any]:
    """`override` on top of `base`, by the module docstring's deep merge (`kind_key`: the block's type key)."""
    if kind_key in base and kind_key in override and base[kind_key] != override[kind_key]:
        return dict(override)
    return base | {key: deep_merge(base[key], value, "mode" if key == "transition_on" else "type")
                   if isinstance(value, dict) and isinstance(base.get(key), dict) else value
                   for key, value in override.items()}


def merged_step_fields(step: StepConfig, defaults: StepDefaults) -> dict[str, Any]:
    """The step's own values over the pipeline defaults (no globals, no built-ins): what the user wrote for it."""
    return deep_merge(defaults.model_dump(exclude_none=True),
                      step.model_dump(exclude_none=True, exclude={"name", "after", "description"}))


def resolve_step(index: int, step: StepConfig, defaults: StepDefaults, globals_: dict[str, Any],
                 previous: str | None, dataset_sizes: dict[str, int | None] | None = None) -> ResolvedStep:
    """The concrete step; `dataset_sizes`: the datasets' own img_size, under the step's. ConfigError when n_epochs or
    the dataset is given nowhere (step, defaults, globals)."""
    given = merged_step_fields(step, defaults)
    values = {**globals_, **given}  # `given` holds no None: a None global is one that nothing sets
    transition = dict(values.get("transition_on", {}))
    if values.get("n_epochs") is None and transition.get("mode") == "loss_threshold":
        values["n_epochs"] = transition.get("max_epochs")  # its bound: n_epochs would only be max_epochs' default

    if values.get("n_epochs") is None:
        raise ConfigError([ConfigIssue((*STEPS, index, "n_epochs"), "required: set it on the step, in "
                                       "training.pipeline.defaults or as training.n_epochs (a loss_threshold step: "
                                       "or its transition_on.max_epochs)")])
    if values.get("dataset") is None:
        raise ConfigError([ConfigIssue((*STEPS, index, "dataset"), "required: training.pipeline.datasets has several "
                                       "entries and no default_dataset; name one here or set "
                                       "training.pipeline.default_dataset")])

    if "img_size" not in given:
        values["img_size"] = (dataset_sizes or {}).get(values["dataset"]) or values["img_size"]
    values["unfreeze"] = list(dict.fromkeys(values.get("unfreeze", [])))
    # `unfreeze` overrides `freeze`, from the defaults or from the step alike (the original tool's documentation).
    values["freeze"] = [n for n in dict.fromkeys(values.get("freeze", [])) if n not in values["unfreeze"]]
    mode = transition.get("mode") or "epoch"
    watched = mode == "loss_threshold"  # metric and threshold mean something only there
    values["transition_on"] = Transition(mode=mode, metric=transition.get("metric") if watched else None,
                                         threshold=transition.get("threshold") if watched else None,
                                         max_epochs=transition.get("max_epochs") or values["n_epochs"],
                                         window=transition.get("window") or TRANSITION_WINDOW)
    resolved = ResolvedStep(index=index, name=step.name, parent=step.after if step.after is not None else previous,
                            hypothesis=step.name, **values)
    written = resolved.optimization
    resolved = resolved.model_copy(update={"optimization": _resolve_optimization(resolved)})
    resolved._lr_read = any(written.optimizers.get(g, OptimizerConfig()).lr is None
                            for g in modes.optimizer_groups(resolved))
    return resolved


def _resolve_optimization(step: ResolvedStep) -> Optimization:
    """One optimizer per group the step trains (AdamW at the step's lr unless configured); schedulers only where
    configured (none = constant lr). Groups the step does not train are left out."""
    written, groups = step.optimization, modes.optimizer_groups(step)
    ordered = [g for g in modes.OPTIMIZER_GROUPS if g in groups]
    return Optimization(
        optimizers={g: written.optimizers.get(g, OptimizerConfig()).resolved(step.lr, g) for g in ordered},
        schedulers={g: written.schedulers[g].resolved(step.transition_on.max_epochs)
                    for g in ordered if g in written.schedulers},
    )


# Seed replicates (`training.replicates`): the same steps trained once per seed, as branches grouped under one
# hypothesis. Each replicated step becomes one step per seed, named `<step>-seed<seed>`, with that seed (data order,
# fresh weights, noise) and its parent's replica of the same seed as its parent (or the shared step it starts from): its
# own checkpoints, step key and nested MLflow run. Every replica keeps the written step's name as its `hypothesis`,
# which `fluxflow-compare` and the pipeline's MLflow run group by (flows/hypotheses.py). Steps expand when resolved
# (PipelineConfig.resolved_steps): the flow, the bare runner, step keys and resume see ordinary steps.
NAME_LIMIT = 64  # the longest step or dataset name (fluxflow/config/load.py NAME_RE)


class ReplicatesConfig(StrictModel):
    seeds: list[Seed] = Field(min_length=1, description="one replicate per seed")
    from_steps: list[str] | None = Field(None, min_length=1, description="replicated steps (and all below them); "
                                                                         "None: every step")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct (the same seed twice trains the same replicate twice)")
        return seeds


def replica_name(step: str, seed: int) -> str:
    return f"{step}-seed{seed}"


def replicated_names(steps: list, replicates: ReplicatesConfig) -> list[str]:
    """The written steps that are replicated, in file order."""
    if replicates.from_steps is None:
        return [step.name for step in steps]
    chosen = set(replicates.from_steps) | set(descendants(steps, replicates.from_steps))
    return [step.name for step in steps if step.name in chosen]


def replicate_steps(steps: list, replicates: ReplicatesConfig | None) -> list:
    """The resolved steps with each replicated one replaced by one copy per seed (next to each other, in file
    order), indices renumbered. Without replicates: `steps` as they are."""
    if replicates is None:
        return steps
    chosen = set(replicated_names(steps, replicates))
    expanded = []
    for step in steps:
        if step.name not in chosen:
            expanded.append(step)
            continue
        for seed in replicates.seeds:
            parent = replica_name(step.parent, seed) if step.parent in chosen else step.parent
            expanded.append(step.model_copy(update={"name": replica_name(step.name, seed), "parent": parent,
                                                    "seed": seed}))
    return [step.model_copy(update={"index": index}) for index, step in enumerate(expanded)]


def replicate_issues(written: list, replicates: ReplicatesConfig | None) -> list[ConfigIssue]:
    """`from_steps` names written steps; replica names are valid step names and collide with no written one."""
    if replicates is None:
        return []
    names = [step.name for step in written]
    issues = [ConfigIssue(("training", "replicates", "from_steps", i),
                          f"no step is named {name!r}{did_you_mean(name, names)}")
              for i, name in enumerate(replicates.from_steps or []) if name not in names]
    if issues:
        return issues
    for name in replicated_names(written, replicates):
        for seed in replicates.seeds:
            replica = replica_name(name, seed)
            if replica in names:
                issues.append(ConfigIssue("training.replicates", f"replica {replica!r} of step {name!r} has the "
                                                                 "name of a step of the file: rename that step"))
            elif len(replica) > NAME_LIMIT:  # the step name passed its own checks: only the length can fail
                issues.append(ConfigIssue("training.replicates", f"replica name {replica!r} of step {name!r} is "
                                                                 f"longer than {NAME_LIMIT} characters: shorten the "
                                                                 "step name"))
    return issues
