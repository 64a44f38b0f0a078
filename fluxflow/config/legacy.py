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
from fluxflow.config.legacy_notes import LegacyNotes as _Notes
from fluxflow.config.legacy_notes import as_dict as _dict
from fluxflow.config.legacy_pipeline import map_pipeline, per_epoch_schedulers

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
    "training_steps": "each batch is one optimizer step per optimizer group",
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
MODE_KEYS = ("train_vae", "gan_training", "use_lpips", "train_spade", "train_diff", "train_diff_full")
LOSS_KEYS = ("kl_beta", "kl_warmup_steps", "kl_free_bits", "lambda_adv", "lambda_lpips")
# training.<key> of the original that are step fields here under another name: defaults of every step.
STEP_DEFAULT_ALIASES = {"initial_clipping_norm": "grad_clip"}
LEGACY_STEP_NAME = "train"


def apply_legacy(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str], list[ConfigIssue]]:
    """(rewritten copy of raw, warnings, issues) for the original tool's keys."""
    original, raw, notes = raw, copy.deepcopy(raw), _Notes()
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
    pipeline = _dict(_dict(raw, "training"), "pipeline")
    if pipeline is not None and (raw != original or notes.dropped or notes.warnings):
        per_epoch_schedulers(pipeline, notes)  # a file with keys of the original tool is one of its configs
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
    losses.update({new: training.pop(old) for old, new in STEP_DEFAULT_ALIASES.items() if old in training})
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
        map_pipeline(pipeline, notes)


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
