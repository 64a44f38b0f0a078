"""Keys of the original tool (fluxflow-training): mapped where they mean something here, reported where not.

Configs written for it keep validating. A key with a meaning here is rewritten to our field before validation
(data_path + captions_file -> a folder dataset, use_fp16 -> precision, ...); a key with no effect here is removed and
reported in `LoadedConfig.warnings` with the reason. Nothing is silently ignored, and nothing here fails a config;
keys nobody ever defined stay in place and are reported as errors by the schema.
"""
from __future__ import annotations

import copy
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from fluxflow.config.errors import ConfigIssue
from fluxflow.config.modes import ALL_MODES
from fluxflow.config.optim import EPOCH_ONLY

ARCH = "there is one model architecture here, sized by the model section"
WDS = "declare shards as a dataset instead: training.pipeline.datasets.<name>: {type: webdataset, urls: ...}"

MODEL_NO_EFFECT = {
    "pretrained_bert_model": "the text encoder is model.text_encoder: the byte-level one trained here (the default), "
                             "or type: pretrained with a local path; nothing is downloaded",
    "use_gradient_checkpointing": "the models are small enough to train without it",
    "model_type": ARCH, "model_version": ARCH, "baseline_activation": ARCH, "baseline_vae_width_mult": ARCH,
    "baseline_vae_depth_mult": ARCH, "baseline_flow_blocks": ARCH, "baseline_flow_ffn_expansion": ARCH,
}
DATA_NO_EFFECT = {
    "tokenizer_name": "text is tokenized byte by byte, so no tokenizer is downloaded",
    "fixed_prompt_prefix": "captions are used as written",
    "use_webdataset": WDS, "webdataset_token": WDS, "webdataset_url": WDS, "webdataset_image_key": WDS,
    "webdataset_label_key": WDS, "webdataset_caption_key": WDS, "webdataset_size": WDS,
    "webdataset_samples_per_shard": WDS, "use_tt2m": WDS, "tt2m_token": WDS,
    "dataloader_max_retries": "unreadable samples are skipped and counted",
    "dataloader_retry_delay": "unreadable samples are skipped and counted",
    "reduced_min_sizes": "images are trained at data.img_size only",
}
TRAINING_NO_EFFECT = {
    "lr_min": "give a step a scheduler instead: optimization.schedulers.<group>.eta_min_factor",
    "preserve_lr": "optimizer and scheduler state are always restored on resume",
    "training_steps": "a step's optimizer steps are its batches / gradient_accumulation_steps (a step field)",
    "spade_training_mode": "SPADE is on for the whole step when train_spade is true",
}
OUTPUT_NO_EFFECT = {
    "samples_per_checkpoint": "samples are written every checkpoint_save_interval batches and at epoch end; "
                              "no_samples: true turns them off",
    "test_image_address": "VAE samples reconstruct held-out images of the step's dataset",
    "generate_diagrams": "metrics go to MLflow and to graph/training_metrics_<step>.jsonl",
    "log_level": "the console shows progress lines; metrics go to MLflow and graph/*.jsonl",
    "log_file": "the console shows progress lines; metrics go to MLflow and graph/*.jsonl",
}
LOSS_KEYS = ("kl_beta", "kl_warmup_steps", "kl_free_bits", "lambda_adv", "lambda_lpips")
# training.<key> of the original that are step fields here (key -> name here): defaults of every step.
STEP_DEFAULT_KEYS = {**{key: key for key in LOSS_KEYS}, "initial_clipping_norm": "grad_clip"}
LEGACY_STEP_NAME = "train"


def apply_legacy(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[ConfigIssue]]:
    """(rewritten copy of raw, warnings, issues) for the original tool's keys."""
    original, raw, notes = raw, copy.deepcopy(raw), LegacyNotes()
    for section, table in (("model", MODEL_NO_EFFECT), ("data", DATA_NO_EFFECT),
                           ("training", TRAINING_NO_EFFECT), ("output", OUTPUT_NO_EFFECT)):
        notes.drop(get_in(raw, section) or {}, table, section)
    _top_level_optimization(raw, notes)
    training = get_in(raw, "training") or {}  # none: nothing to map (its absence is the schema's to report)
    _precision(training, notes)
    _pipeline(training, notes)
    _folder_dataset(raw, notes)  # after _pipeline, which may have built the pipeline block
    _sample_sizes(raw, notes)
    pipeline = get_in(raw, "training", "pipeline")
    if pipeline is not None and (raw != original or notes.dropped or notes.warnings):
        per_epoch_schedulers(pipeline, notes)  # a file with keys of the original tool is one of its configs
    return raw, notes.all_warnings(), notes.issues


def _top_level_optimization(raw: dict, notes: LegacyNotes) -> None:
    if get_in(raw, "optimization") is None:
        return
    for key, value in raw.pop("optimization").items():
        if key != "optim_sched_config":
            notes.issues.append(ConfigIssue(f"optimization.{key}", "unknown key: optimizers and schedulers are set "
                                            "per step (training.pipeline.steps[i].optimization) or in "
                                            "training.pipeline.defaults.optimization"))
        elif value is not None:
            notes.warnings.append("optimization.optim_sched_config: has no effect here (give each step an "
                                  "optimization block, or one in training.pipeline.defaults)")


def _folder_dataset(raw: dict, notes: LegacyNotes) -> None:
    """data.data_path + data.captions_file are the folder dataset `default` unless the pipeline declares datasets."""
    data = get_in(raw, "data") or {}
    path, captions = data.pop("data_path", None), data.pop("captions_file", None)
    if not path and not captions:
        return
    pipeline = get_in(raw, "training", "pipeline")
    if pipeline is not None and pipeline.get("datasets"):
        notes.warnings.append("data.data_path/captions_file: have no effect here because "
                              "training.pipeline.datasets is given")
        return
    for key, value in (("data_path", path), ("captions_file", captions)):
        if not value:
            notes.issues.append(ConfigIssue(f"data.{key}", "required: data.data_path and data.captions_file "
                                            "together make the folder dataset 'default'"))
    if path and captions and pipeline is not None:
        pipeline["datasets"] = {"default": {"type": "folder", "path": path, "captions_file": captions}}
        pipeline.setdefault("default_dataset", "default")


def _precision(training: dict, notes: LegacyNotes) -> None:
    if "use_fp16" not in training:
        return
    fp16 = training.pop("use_fp16")
    if not isinstance(fp16, bool):
        notes.issues.append(ConfigIssue("training.use_fp16", f"must be true or false (got {fp16!r})"))
    elif "precision" in training:
        notes.warnings.append("training.use_fp16: has no effect here because training.precision is given")
    elif fp16:
        training["precision"] = "auto"
        notes.warnings.append("training.use_fp16: fp16 is not used here; precision is 'auto' instead: "
                              "bf16 autocast on CUDA, fp32 on CPU")
    else:
        training["precision"] = "fp32"


def _pipeline(training: dict, notes: LegacyNotes) -> None:
    pipeline = training.get("pipeline")
    if isinstance(pipeline, list):
        notes.issues.append(ConfigIssue("training.pipeline", "is a list, but the steps must go under 'steps:'; "
                                        "write `pipeline:` then `steps:` then the list of steps"))
        training["pipeline"] = pipeline = {"steps": pipeline}
    implicit = pipeline is None or (isinstance(pipeline, dict) and "steps" not in pipeline)
    modes = {k: training.pop(k) for k in ALL_MODES if k in training}
    olds = {new: old for old, new in STEP_DEFAULT_KEYS.items() if old in training}
    losses = {new: training.pop(old) for new, old in olds.items()}
    if implicit and any(modes.values()):
        # A single-mode config of the original tool: its modes and loss weights become one step (of n_epochs 1 unless
        # training sets it: the original's default).
        epochs = {} if "n_epochs" in training else {"n_epochs": 1}
        training["pipeline"] = {**(pipeline or {}), "steps": [{"name": LEGACY_STEP_NAME, **epochs, **modes, **losses}]}
        notes.warnings.append(f"training: no pipeline steps given; the training modes "
                              f"({', '.join(k for k, v in modes.items() if v)}) run as one step "
                              f"named '{LEGACY_STEP_NAME}'")
        return
    notes.warnings += [f"training.{key}: has no effect here (each step of training.pipeline.steps sets its own "
                       "training modes)" for key, on in modes.items() if on]
    if isinstance(pipeline, dict):
        if losses:  # the original's global loss weights: defaults for every step that sets none
            defaults = pipeline.setdefault("defaults", {})
            if isinstance(defaults, dict):  # a value the defaults give, under either name, wins over the global one
                notes.warnings += _shadowed_globals(olds, pipeline)
                given = {STEP_ALIASES.get(key, key) for key in defaults}
                defaults.update({key: value for key, value in losses.items() if key not in given})
        notes.drop(pipeline, {"mode": "steps run in file order, or after the step named by their `after:`"},
                   "training.pipeline")
        for path, block in _step_blocks(pipeline):
            if isinstance(block, dict):
                map_step(block, path, notes)
        for name, dataset in (get_in(pipeline, "datasets") or {}).items():
            if isinstance(dataset, dict):
                map_dataset(dataset, f"training.pipeline.datasets.{name}", notes)


def _shadowed_globals(olds: dict[str, str], pipeline: dict) -> list[str]:
    """The original's global loss keys ({step field: its global name}) that no step trains with, because
    training.pipeline.defaults or every step sets the field (under either name): they were dropped without a word,
    where the same clash on a step is said."""
    def sets(block: Any, key: str) -> bool:
        return isinstance(block, dict) and key in {STEP_ALIASES.get(k, k) for k in block}

    steps = get_in(pipeline, "steps", kind=list) or []
    warnings = []
    for new, old in olds.items():
        if sets(pipeline.get("defaults"), new):
            warnings.append(f"training.{old}: has no effect: training.pipeline.defaults sets {new}")
        elif steps and all(sets(step, new) for step in steps):
            warnings.append(f"training.{old}: has no effect: every step sets its own {new}")
    return warnings


def _sample_sizes(raw: dict, notes: LegacyNotes) -> None:
    """The original accepted 512, "512", "768x512" and [768, 512]; only square sizes are sampled here."""
    sizes, kept = get_in(raw, "output", "sample_sizes", kind=list) or [], []
    for i, spec in enumerate(sizes):
        if isinstance(spec, str) and "x" in spec.lower():
            spec = spec.lower().split("x", 1)
        if isinstance(spec, list) and len(spec) == 2:
            if str(spec[0]).strip() == str(spec[1]).strip():
                spec = spec[0]
            else:
                notes.warnings.append(f"output.sample_sizes[{i}]: {spec[0]}x{spec[1]} is not sampled "
                                      "(only square sizes are)")
                continue
        kept.append(spec)
    sizes[:] = kept


@dataclass
class LegacyNotes:
    """The keys dropped (one warning line per reason), other warnings, and errors of one mapping."""

    dropped: dict[tuple[str, str], list[str]] = field(default_factory=dict)  # (path, reason) -> keys
    warnings: list[str] = field(default_factory=list)
    issues: list[ConfigIssue] = field(default_factory=list)

    def drop(self, section: dict, reasons: dict[str, str], path: str, report_false: Collection[str] = ()) -> None:
        """Remove the keys of `reasons` (key -> why it has no effect here) from `section` (at `path`); each is reported
        unless its value asks for nothing (null, or false unless the key is in `report_false`: a false that asks to
        turn off what is always on here is reported)."""
        for key in [k for k in section if k in reasons]:
            value = section.pop(key)
            if value is not None and (value is not False or key in report_false):
                self.dropped.setdefault((path, reasons[key]), []).append(key)

    def all_warnings(self) -> list[str]:
        return [f"{path}.{keys[0]}: has no effect here ({reason})" if len(keys) == 1 else
                f"{path}.{{{', '.join(keys)}}}: have no effect here ({reason})"
                for (path, reason), keys in self.dropped.items()] + self.warnings


def get_in(parent: Any, *keys: str, kind: type = dict) -> Any:
    """parent[key0][key1]... when that is a `kind` (a mapping unless told), else None."""
    for key in keys:
        parent = parent.get(key) if isinstance(parent, dict) else None
    return parent if isinstance(parent, kind) else None


def _step_blocks(pipeline: dict) -> list[tuple[str, Any]]:
    """(path, block) of `training.pipeline.defaults` and of every step; a block need not be a mapping."""
    steps = get_in(pipeline, "steps", kind=list) or []
    return [("training.pipeline.defaults", pipeline.get("defaults")),
            *((f"training.pipeline.steps[{i}]", step) for i, step in enumerate(steps))]


# The original tool's keys inside `training.pipeline` (its 0.8.x steps, defaults, optimizers, transitions and
# datasets): mapped where they mean something here, reported where not, never rejected as unknown.
# Called by apply_legacy on the raw file before the schema sees it; each function rewrites one block in place.

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


def map_step(step: dict, path: str, notes: LegacyNotes) -> None:
    for old, new in STEP_ALIASES.items():
        if old in step and new in step:
            del step[old]
            notes.warnings.append(f"{path}.{old}: has no effect here because {new} is given")
        elif old in step:
            step[new] = step.pop(old)
    notes.drop(step, STEP_NO_EFFECT, path, report_false={"use_ema"})  # use_ema: false asks to turn EMA off
    # train_kl: false switched the KL term off; here that is kl_beta 0. true is what always happens here.
    train_kl = step.pop("train_kl", None)  # absent or null: nothing to map
    if train_kl is False:
        step["kl_beta"] = 0.0
        notes.warnings.append(f"{path}.train_kl: false is kl_beta: 0 here (no KL loss)")
    elif train_kl is not True and train_kl is not None:
        notes.issues.append(ConfigIssue(f"{path}.train_kl", f"must be true or false (got {train_kl!r})"))
    for which in ("freeze", "unfreeze"):
        names = get_in(step, which, kind=list) or []
        for i, name in enumerate(names):
            if isinstance(name, str) and name in COMPONENT_ALIASES:  # a non-text entry: the schema reports it
                names[i] = COMPONENT_ALIASES[name]
                notes.warnings.append(f"{path}.{which}[{i}]: '{name}' is called '{names[i]}' here")
    for group, optimizer in (get_in(step, "optimization", "optimizers") or {}).items():
        if isinstance(optimizer, dict):
            _optimizer(optimizer, f"{path}.optimization.optimizers.{group}", notes)
    transition = get_in(step, "transition_on") or {}
    notes.drop(transition, {"value": "an epoch-mode step runs n_epochs"}, f"{path}.transition_on")
    metric = transition.get("metric")
    if isinstance(metric, str) and metric in METRIC_ALIASES:
        transition["metric"] = METRIC_ALIASES[metric]
        notes.warnings.append(f"{path}.transition_on.metric: '{metric}' is called '{transition['metric']}' here")


def _optimizer(optimizer: dict, path: str, notes: LegacyNotes) -> None:
    """Lion (a package that is not installed here) trains as AdamW at the same lr; its betas mean something else."""
    if optimizer.get("type") == "Lion":
        optimizer["type"] = "AdamW"
        dropped = [k for k in ("betas", "decoupled_weight_decay") if optimizer.pop(k, None) is not None]
        notes.warnings.append(f"{path}.type: optimizer type Lion is not available here; AdamW with the same lr "
                              "is used" + (f" ({', '.join(dropped)} of Lion not used)" if dropped else ""))
    else:
        notes.drop(optimizer, {"decoupled_weight_decay": "a parameter of Lion; AdamW always decouples it"}, path)


def map_dataset(dataset: dict, path: str, notes: LegacyNotes) -> None:
    """local -> folder; webdataset keys -> ours; noise (Gaussian noise images) -> the built-in shapes dataset."""
    kind = dataset.get("type")
    if kind is None and not ({"image_folder", "webdataset_url", "num_samples"} & set(dataset)):
        return  # ours, with its type missing: the schema says so
    kind = kind or "local"  # the original's dataset type defaulted to local
    if kind not in ("local", "webdataset", "noise"):
        return
    notes.drop(dataset, DATASET_NO_EFFECT, path)
    if kind == "noise":
        notes.drop(dataset, NOISE_NO_EFFECT, path)
        notes.warnings.append(f"{path}.type: dataset type noise is not available here; the built-in shapes dataset "
                              "is used instead (num_samples images)")
    for old, new in DATASET_RENAMES.items():
        if old in dataset:
            dataset.setdefault(new, dataset.pop(old))
    dataset["type"] = {"local": "folder", "noise": "shapes"}.get(kind, kind)


def per_epoch_schedulers(pipeline: dict, notes: LegacyNotes) -> None:
    """The original tool stepped its schedulers once per epoch (a StepLR step_size counted epochs); here the default
    is per optimizer update. In a config of the original tool, a scheduler without `interval` gets `interval: epoch`,
    with a warning. A step's scheduler inherits the interval its defaults' entry of the same group sets, unless it
    names another type: that replaces the defaults' entry whole (steps.deep_merge), interval included."""
    defaults = get_in(pipeline, "defaults", "optimization", "schedulers") or {}
    for path, block in _step_blocks(pipeline):
        inherited = {} if path == "training.pipeline.defaults" else defaults
        for group, scheduler in (get_in(block, "optimization", "schedulers") or {}).items():
            parent = get_in(inherited, group) or {}
            types = (parent.get("type"), scheduler.get("type")) if isinstance(scheduler, dict) else (None, None)
            if None not in types and types[0] != types[1]:  # replaces the defaults' entry, interval and all
                parent = {}
            if not isinstance(scheduler, dict) or "interval" in scheduler or "interval" in parent \
                    or (scheduler.get("type") or parent.get("type")) in EPOCH_ONLY:  # always per epoch anyway
                continue
            scheduler["interval"] = "epoch"
            notes.warnings.append(f"{path}.optimization.schedulers.{group}: interval: epoch, as the original tool "
                                  "stepped its schedulers once per epoch (new configs default to interval: step, "
                                  "once per optimizer update; write the interval to choose)")
