"""The original tool's keys inside `training.pipeline` (its 0.8.x steps, defaults, optimizers, transitions and
datasets): mapped where they mean something here, reported where not, never rejected as unknown.

Called by legacy.py on the raw file before the schema sees it; each function rewrites one block in place.
"""
from __future__ import annotations

from fluxflow.config.errors import ConfigIssue
from fluxflow.config.legacy_notes import LegacyNotes, as_dict
from fluxflow.config.optim import EPOCH_ONLY

STEP_ALIASES = {"cfg_dropout_prob": "cfg_dropout", "mse_weight": "recon_mse_weight",
                "adaptive_weights": "adaptive_adv_weight", "initial_clipping_norm": "grad_clip"}
FLOW_TIME = "flow time is continuous in [0, 1]"
INSTANCE_NOISE = "the discriminator gets no instance noise here; R1 (r1_gamma) regularises it"
STEP_NO_EFFECT = {
    "use_ema": "EMA weights are always kept, with decay ema_decay, and used for samples",
    "spade_training_mode": "SPADE is on for the whole step when train_spade is true",
    "lr_min": "give the step a scheduler instead: optimization.schedulers.<group>.eta_min_factor",
    "use_fp16": "set training.precision",
    "instance_noise_std": INSTANCE_NOISE, "instance_noise_decay": INSTANCE_NOISE,
    "num_train_timesteps": FLOW_TIME, "start_step": FLOW_TIME,
}
# Keys whose false asks to turn off something that is always on here: reported too.
REPORT_FALSE = {"use_ema"}
COMPONENT_ALIASES = {"flow": "flow_processor", "D_img": "discriminator"}
METRIC_ALIASES = {"vae": "vae_loss", "recon": "vae_loss", "recon_loss": "vae_loss", "kl": "kl_loss",
                  "generator": "g_loss", "discriminator": "d_loss", "lpips": "lpips_loss", "flow": "flow_loss"}

WDS_KEYS = "the image is the sample's jpg/png/webp/... member and the caption its txt/caption/text/json member"
DATASET_NO_EFFECT = {
    "webdataset_token": "credentials come from the configuration of the URL's fsspec filesystem",
    "webdataset_image_key": WDS_KEYS, "webdataset_label_key": WDS_KEYS, "webdataset_caption_key": WDS_KEYS,
    "webdataset_samples_per_shard": "shards are counted from their tar headers",
    "batch_size": "set batch_size on the steps that use the dataset",
    "workers": "set workers on the steps that use the dataset",
}
DATASET_RENAMES = {"image_folder": "path", "webdataset_url": "urls", "webdataset_size": "length",
                   "num_samples": "size"}
NOISE_NO_EFFECT = {"dimensions": "images are data.img_size square", "noise_std": "the shapes images are not noise"}


def map_pipeline(pipeline: dict, notes: LegacyNotes) -> None:
    """Every step, the defaults and the datasets of a `training.pipeline` mapping."""
    if "mode" in pipeline:
        notes.drop(pipeline, "mode", "training.pipeline", "steps run in file order, or after the step named by "
                                                          "their `after:`")
    blocks = [("training.pipeline.defaults", pipeline.get("defaults"))]
    if isinstance(pipeline.get("steps"), list):
        blocks += [(f"training.pipeline.steps[{i}]", s) for i, s in enumerate(pipeline["steps"])]
    for path, block in blocks:
        if isinstance(block, dict):
            map_step(block, path, notes)
    for name, dataset in (as_dict(pipeline, "datasets") or {}).items():
        if isinstance(dataset, dict):
            map_dataset(dataset, f"training.pipeline.datasets.{name}", notes)


def map_step(step: dict, path: str, notes: LegacyNotes) -> None:
    for old, new in STEP_ALIASES.items():
        if old in step:
            value = step.pop(old)
            if new in step:
                notes.warnings.append(f"{path}.{old}: has no effect here because {new} is given")
            else:
                step[new] = value
    for key in [k for k in step if k in STEP_NO_EFFECT]:
        notes.drop(step, key, path, STEP_NO_EFFECT[key], report_false=key in REPORT_FALSE)
    _train_kl(step, path, notes)
    for field in ("freeze", "unfreeze"):
        names = step.get(field)
        if isinstance(names, list):
            for i, name in enumerate(names):
                if name in COMPONENT_ALIASES:
                    names[i] = COMPONENT_ALIASES[name]
                    notes.warnings.append(f"{path}.{field}[{i}]: '{name}' is called '{names[i]}' here")
    optimizers = as_dict(as_dict(step, "optimization"), "optimizers") or {}
    for group, optimizer in optimizers.items():
        if isinstance(optimizer, dict):
            _optimizer(optimizer, f"{path}.optimization.optimizers.{group}", notes)
    transition = as_dict(step, "transition_on")
    if transition is not None:
        _transition(transition, f"{path}.transition_on", notes)


def _train_kl(step: dict, path: str, notes: LegacyNotes) -> None:
    """train_kl: false switched the KL term off; here that is kl_beta 0. true is what always happens here."""
    if "train_kl" not in step:
        return
    value = step.pop("train_kl")
    if value is False:
        step["kl_beta"] = 0.0
        notes.warnings.append(f"{path}.train_kl: false is kl_beta: 0 here (no KL loss)")
    elif value is not True and value is not None:
        notes.issues.append(ConfigIssue(f"{path}.train_kl", f"must be true or false (got {value!r})"))


def _optimizer(optimizer: dict, path: str, notes: LegacyNotes) -> None:
    """Lion (a package that is not installed here) trains as AdamW at the same lr; its betas mean something else."""
    if optimizer.get("type") == "Lion":
        optimizer["type"] = "AdamW"
        dropped = [k for k in ("betas", "decoupled_weight_decay") if optimizer.pop(k, None) is not None]
        notes.warnings.append(f"{path}.type: optimizer type Lion is not available here; AdamW with the same lr "
                              "is used" + (f" ({', '.join(dropped)} of Lion not used)" if dropped else ""))
    elif "decoupled_weight_decay" in optimizer:
        notes.drop(optimizer, "decoupled_weight_decay", path, "a parameter of Lion; AdamW always decouples it")


def _transition(transition: dict, path: str, notes: LegacyNotes) -> None:
    if "value" in transition:
        notes.drop(transition, "value", path, "an epoch-mode step runs n_epochs")
    metric = transition.get("metric")
    if isinstance(metric, str) and metric in METRIC_ALIASES:
        transition["metric"] = METRIC_ALIASES[metric]
        notes.warnings.append(f"{path}.metric: '{metric}' is called '{transition['metric']}' here")


def _dataset_type(dataset: dict) -> str | None:
    """The original's dataset type; it defaulted to local."""
    kind = dataset.get("type")
    if kind is None and not ({"image_folder", "webdataset_url", "num_samples"} & set(dataset)):
        return None  # ours, with its type missing: the schema says so
    return kind or "local"


def map_dataset(dataset: dict, path: str, notes: LegacyNotes) -> None:
    """local -> folder; webdataset keys -> ours; noise (Gaussian noise images) -> the built-in shapes dataset."""
    kind = _dataset_type(dataset)
    if kind not in ("local", "webdataset", "noise"):
        return
    for key in [k for k in dataset if k in DATASET_NO_EFFECT]:
        notes.drop(dataset, key, path, DATASET_NO_EFFECT[key])
    if kind == "noise":
        for key in [k for k in dataset if k in NOISE_NO_EFFECT]:
            notes.drop(dataset, key, path, NOISE_NO_EFFECT[key])
        notes.warnings.append(f"{path}.type: dataset type noise is not available here; the built-in shapes dataset "
                              "is used instead (num_samples images)")
    for old, new in DATASET_RENAMES.items():
        if old in dataset:
            value = dataset.pop(old)
            dataset.setdefault(new, value)
    dataset["type"] = {"local": "folder", "noise": "shapes"}.get(kind, kind)


def per_epoch_schedulers(pipeline: dict, notes: LegacyNotes) -> None:
    """The original tool stepped its schedulers once per epoch (a StepLR step_size counted epochs); here the default
    is per optimizer update. In a config of the original tool, a scheduler without `interval` gets `interval: epoch`,
    with a warning. A step's scheduler inherits the interval its defaults' entry of the same group sets."""
    defaults = as_dict(as_dict(as_dict(pipeline, "defaults"), "optimization"), "schedulers") or {}
    blocks = [("training.pipeline.defaults", defaults, {})]
    if isinstance(pipeline.get("steps"), list):
        blocks += [(f"training.pipeline.steps[{i}]", as_dict(as_dict(step, "optimization"), "schedulers") or {},
                    defaults) for i, step in enumerate(pipeline["steps"])]
    for path, schedulers, inherited in blocks:
        for group, scheduler in schedulers.items():
            parent = inherited.get(group) if isinstance(inherited.get(group), dict) else {}
            if not isinstance(scheduler, dict) or "interval" in scheduler or "interval" in parent:
                continue
            if (scheduler.get("type") or parent.get("type")) in EPOCH_ONLY:
                continue  # always per epoch anyway
            scheduler["interval"] = "epoch"
            notes.warnings.append(f"{path}.optimization.schedulers.{group}: interval: epoch, as the original tool "
                                  "stepped its schedulers once per epoch (new configs default to interval: step, "
                                  "once per optimizer update; write the interval to choose)")
