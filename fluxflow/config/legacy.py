"""Keys of the original tool (fluxflow-training): mapped where they mean something here, reported where not.

Configs written for it keep validating. A key with a meaning here is rewritten to our field before validation
(data_path + captions_file -> a folder dataset, use_fp16 -> precision, ...); a key with no effect here is removed and
reported in `LoadedConfig.warnings` with the reason. Nothing is silently ignored, and nothing here fails a config;
keys nobody ever defined stay in place and are reported as errors by the schema.
"""
from __future__ import annotations

import copy
from typing import Any

from fluxflow.config.errors import ConfigIssue

NO_EFFECT = "has no effect here"
ARCH = "there is one model architecture here, sized by the model section"
WDS = "declare shards as a dataset instead: training.pipeline.datasets.<name>: {type: webdataset, urls: ...}"

MODEL_NO_EFFECT = {
    "pretrained_bert_model": "the text encoder is a small byte-level transformer trained here; nothing is downloaded",
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
    "training_steps": "each batch is one optimizer step",
    "initial_clipping_norm": NO_EFFECT,
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
# Step keys of later versions of the original tool.
STEP_ALIASES = {"cfg_dropout_prob": "cfg_dropout", "mse_weight": "recon_mse_weight",
                "adaptive_weights": "adaptive_adv_weight"}
STEP_NO_EFFECT = {
    "use_ema": "EMA weights are always kept (ema_decay) and used for samples",
    "spade_training_mode": "SPADE is on for the whole step when train_spade is true",
    "gradient_accumulation_steps": NO_EFFECT, "lr_min": NO_EFFECT, "use_fp16": "set training.precision",
    "initial_clipping_norm": NO_EFFECT, "instance_noise_std": NO_EFFECT, "instance_noise_decay": NO_EFFECT,
    "num_train_timesteps": "flow time is continuous in [0, 1]", "start_step": "flow time is continuous in [0, 1]",
}
COMPONENT_ALIASES = {"flow": "flow_processor", "D_img": "discriminator"}
MODE_KEYS = ("train_vae", "gan_training", "use_lpips", "train_spade", "train_diff", "train_diff_full")
LOSS_KEYS = ("kl_beta", "kl_warmup_steps", "kl_free_bits", "lambda_adv", "lambda_lpips")
LEGACY_STEP_NAME = "train"


class _Notes:
    def __init__(self) -> None:
        self.dropped: dict[tuple[str, str], list[str]] = {}  # (path, reason) -> keys, for one line per reason
        self.warnings: list[str] = []
        self.issues: list[ConfigIssue] = []

    def drop(self, section: dict, key: str, path: str, reason: str) -> None:
        """Remove a key with no effect here; reported unless its value asks for nothing (null or false)."""
        value = section.pop(key)
        if value is not None and value is not False:
            self.dropped.setdefault((path, reason), []).append(key)

    def all_warnings(self) -> list[str]:
        lines = []
        for (path, reason), keys in self.dropped.items():
            names = f"{path}.{keys[0]}: has" if len(keys) == 1 else f"{path}.{{{', '.join(keys)}}}: have"
            lines.append(f"{names} no effect here" + ("" if reason == NO_EFFECT else f" ({reason})"))
        return lines + self.warnings


def _dict(parent: Any, key: str) -> dict | None:
    value = parent.get(key) if isinstance(parent, dict) else None
    return value if isinstance(value, dict) else None


def apply_legacy(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[ConfigIssue]]:
    """(rewritten copy of raw, warnings, issues) for the original tool's keys."""
    raw, notes = copy.deepcopy(raw), _Notes()
    for section, table in (("model", MODEL_NO_EFFECT), ("data", DATA_NO_EFFECT),
                           ("training", TRAINING_NO_EFFECT), ("output", OUTPUT_NO_EFFECT)):
        body = _dict(raw, section)
        for key in [k for k in (body or {}) if k in table]:
            notes.drop(body, key, section, table[key])
    _top_level_optimization(raw, notes)
    training = _dict(raw, "training")
    if training is not None:
        _precision(training, notes)
        _pipeline(training, notes)
    _folder_dataset(raw, notes)  # after _pipeline, which may have built the pipeline block
    _sample_sizes(raw, notes)
    return raw, notes.all_warnings(), notes.issues


def _top_level_optimization(raw: dict, notes: _Notes) -> None:
    body = raw.get("optimization") if isinstance(raw, dict) else None
    if not isinstance(body, dict):
        return
    raw.pop("optimization")
    for key in body:
        if key == "optim_sched_config":
            if body[key] is not None:
                notes.warnings.append("optimization.optim_sched_config: has no effect here (give each step an "
                                      "optimization block, or one in training.pipeline.defaults)")
        else:
            notes.issues.append(ConfigIssue(f"optimization.{key}", "unknown key: optimizers and schedulers are set "
                                            "per step (training.pipeline.steps[i].optimization) or in "
                                            "training.pipeline.defaults.optimization"))


def _folder_dataset(raw: dict, notes: _Notes) -> None:
    """data.data_path + data.captions_file are the folder dataset `default` unless the pipeline declares datasets."""
    data = _dict(raw, "data")
    if data is None or not ({"data_path", "captions_file"} & set(data)):
        return
    path, captions = data.pop("data_path", None), data.pop("captions_file", None)
    if not path and not captions:
        return
    pipeline = _dict(_dict(raw, "training"), "pipeline")
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


def _precision(training: dict, notes: _Notes) -> None:
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


def _pipeline(training: dict, notes: _Notes) -> None:
    pipeline = training.get("pipeline")
    if isinstance(pipeline, list):
        notes.issues.append(ConfigIssue("training.pipeline", "is a list, but the steps must go under 'steps:'; "
                                        "write `pipeline:` then `steps:` then the list of steps"))
        training["pipeline"] = pipeline = {"steps": pipeline}
    implicit = pipeline is None or (isinstance(pipeline, dict) and "steps" not in pipeline)
    modes = {k: training.pop(k) for k in MODE_KEYS if k in training}
    losses = {k: training.pop(k) for k in LOSS_KEYS if k in training}
    if implicit and any(modes.values()):
        # A single-mode config of the original tool: its modes and loss weights become one step.
        pipeline = pipeline if isinstance(pipeline, dict) else {}
        # The original's n_epochs defaulted to 1.
        epochs = {} if "n_epochs" in training else {"n_epochs": 1}
        pipeline["steps"] = [{"name": LEGACY_STEP_NAME, **epochs, **modes, **losses}]
        training["pipeline"] = pipeline
        notes.warnings.append(f"training: no pipeline steps given; the training modes "
                              f"({', '.join(k for k, v in modes.items() if v)}) run as one step "
                              f"named '{LEGACY_STEP_NAME}'")
        return
    for key in [k for k, v in modes.items() if v]:
        notes.warnings.append(f"training.{key}: has no effect here (each step of training.pipeline.steps "
                              f"sets its own training modes)")
    if isinstance(pipeline, dict):
        if losses:  # the original's global loss weights: defaults for every step that sets none
            defaults = pipeline.setdefault("defaults", {})
            if isinstance(defaults, dict):
                for key, value in losses.items():
                    defaults.setdefault(key, value)
        if "mode" in pipeline:
            notes.drop(pipeline, "mode", "training.pipeline", "steps run in file order, or after the step "
                                                             "named by their `after:`")
        blocks = [("training.pipeline.defaults", pipeline.get("defaults"))]
        if isinstance(pipeline.get("steps"), list):
            blocks += [(f"training.pipeline.steps[{i}]", s) for i, s in enumerate(pipeline["steps"])]
        for path, block in blocks:
            if isinstance(block, dict):
                _step(block, path, notes)


def _step(step: dict, path: str, notes: _Notes) -> None:
    for old, new in STEP_ALIASES.items():
        if old in step:
            value = step.pop(old)
            if new in step:
                notes.warnings.append(f"{path}.{old}: has no effect here because {new} is given")
            else:
                step[new] = value
    for key in [k for k in step if k in STEP_NO_EFFECT]:
        notes.drop(step, key, path, STEP_NO_EFFECT[key])
    for field in ("freeze", "unfreeze"):
        names = step.get(field)
        if isinstance(names, list):
            for i, name in enumerate(names):
                if name in COMPONENT_ALIASES:
                    names[i] = COMPONENT_ALIASES[name]
                    notes.warnings.append(f"{path}.{field}[{i}]: '{name}' is called '{names[i]}' here")


def _sample_sizes(raw: dict, notes: _Notes) -> None:
    """The original accepted 512, "512", "768x512" and [768, 512]; only square sizes are sampled here."""
    output = _dict(raw, "output")
    sizes = output.get("sample_sizes") if output else None
    if not isinstance(sizes, list):
        return
    kept = []
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
    output["sample_sizes"] = kept
