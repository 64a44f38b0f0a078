"""Rules that span fields: step names, the step DAG, modes vs freeze lists, metrics, datasets, sizes, LPIPS.

Types and ranges of single fields are the schema's job. These checks run on whatever parts of the file parsed, so
that one broken step does not hide the problems of the others; every problem names its path.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from fluxflow.config import modes
from fluxflow.config.errors import ConfigIssue, did_you_mean, format_path
from fluxflow.config.optim import Optimization, optimizer_issues, scheduler_issues
from fluxflow.config.file_checks import STEPS, checkpoint_issues, frozen_pretrained_issues, lpips_issues, \
    text_encoder_issues
from fluxflow.config.schema import DataConfig, DatasetConfig, ModelConfig, OutputConfig
from fluxflow.config.steps import MissingStepValue, ResolvedStep, StepConfig, StepDefaults, StepGlobals, \
    merged_step_fields, resolve_step

# Step and dataset names become parts of file names and MLflow keys.
NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
NAME_RULE = "must be 1-64 letters, digits, '_' or '-' (it is used in file names)"


@dataclass
class Pieces:
    """The parts of a config that parsed; None where a part did not (its own errors are already reported)."""

    raw_steps: list[Any]
    steps: list[StepConfig | None]
    defaults: StepDefaults | None
    globals_: StepGlobals
    datasets: dict[str, DatasetConfig | None] | None  # a dataset that did not parse: None under its name
    default_dataset: str | None
    model: ModelConfig | None
    data: DataConfig | None
    output: OutputConfig | None
    model_checkpoint: str | None = None


def semantic_issues(p: Pieces) -> list[ConfigIssue]:
    names, afters = ([s.get(key) if isinstance(s, dict) and isinstance(s.get(key), str) else None
                      for s in p.raw_steps] for key in ("name", "after"))
    issues = _name_issues(names) + _dag_issues(names, afters) + _dataset_issues(p) + _size_issues(p)
    issues += text_encoder_issues(p.model)
    issues += defaults_optimization_issues(p.defaults) + checkpoint_issues(p.model_checkpoint)
    lpips_steps = []
    for i, step in enumerate(p.steps):
        if step is None or p.defaults is None:
            continue
        step_issues, uses_lpips = _step_issues(i, step, p)
        issues += step_issues
        lpips_steps += [i] if uses_lpips else []
    return issues + lpips_issues(lpips_steps)


def _unknown(kind: str, value: str, known) -> str:
    """E.g. no dataset is named 'shape' (did you mean 'shapes'?); datasets: shapes."""
    return f"no {kind} is named {value!r}{did_you_mean(value, known)}; {kind}s: {', '.join(known)}"


def _name_issues(names: list[str | None]) -> list[ConfigIssue]:
    issues, seen = [], {}
    for i, name in enumerate(names):
        if name is None:
            continue
        if not NAME_RE.match(name):
            issues.append(ConfigIssue(format_path((*STEPS, i, "name")), f"{name!r} {NAME_RULE}"))
        if name in seen:
            issues.append(ConfigIssue(format_path((*STEPS, i, "name")),
                                      f"duplicate step name {name!r} (also steps[{seen[name]}])"))
        seen.setdefault(name, i)
    return issues


def _dag_issues(names: list[str | None], afters: list[str | None]) -> list[ConfigIssue]:
    """`after:` names a known, other step; following parents never comes back to a step (no cycles)."""
    issues, index = [], {n: i for i, n in reversed(list(enumerate(names))) if n is not None}
    parent: dict[int, int | None] = {}
    for i, after in enumerate(afters):
        path = format_path((*STEPS, i, "after"))
        if after is None:
            parent[i] = i - 1 if i > 0 else None
        elif after == names[i]:
            issues.append(ConfigIssue(path, "a step cannot start from itself"))
        elif after not in index:
            issues.append(ConfigIssue(path, f"no step is named {after!r}{did_you_mean(after, index)}"))
        else:
            parent[i] = index[after]
    reported: set[frozenset[int]] = set()
    for start in parent:
        chain, node = [start], parent.get(start)
        while node is not None and node not in chain:
            chain.append(node)
            node = parent.get(node)
        if node == start and frozenset(chain) not in reported:
            reported.add(frozenset(chain))
            first = min(i for i in chain if afters[i] is not None)
            loop = " -> ".join(str(names[i]) for i in [*chain, start])
            issues.append(ConfigIssue(format_path((*STEPS, first, "after")), f"steps start from each other in a "
                                      f"cycle ({loop}, following 'after' and file order)"))
    return issues


def _dataset_issues(p: Pieces) -> list[ConfigIssue]:
    if p.datasets is None:
        return []
    issues = []
    for name, ds in p.datasets.items():
        loc = ("training", "pipeline", "datasets", name)
        if not NAME_RE.match(name):
            issues.append(ConfigIssue(format_path(loc), f"dataset name {name!r} {NAME_RULE}"))
        if ds is not None and ds.type == "shapes" and ds.holdout >= ds.size:
            issues.append(ConfigIssue(format_path((*loc, "holdout")), f"must be smaller than size ({ds.size})"))
    if p.default_dataset is not None and p.default_dataset not in p.datasets:
        issues.append(ConfigIssue("training.pipeline.default_dataset",
                                  _unknown("dataset", p.default_dataset, p.datasets)))
    return issues


def _size_issues(p: Pieces) -> list[ConfigIssue]:
    if p.model is None:
        return []
    m, issues = p.model, []
    if m.feature_maps_dim % 4 or m.feature_maps_dim % m.flow_heads:  # 2-D position embedding: 4 parts
        issues.append(ConfigIssue("model.feature_maps_dim", f"{m.feature_maps_dim} must be divisible by 4 and by "
                                                            f"model.flow_heads ({m.flow_heads})"))
    unit = m.downscale * m.patch_size
    why = f"a multiple of {unit} (model.downscale {m.downscale} x model.patch_size {m.patch_size})"
    sizes = [(("data", "img_size"), p.data and p.data.img_size)]
    sizes += [(("output", "sample_sizes", i), size) for i, size in enumerate(p.output and p.output.sample_sizes or [])]
    sizes += [((*STEPS, i, "img_size"), step and step.img_size) for i, step in enumerate(p.steps)]
    sizes += [(("training", "pipeline", "defaults", "img_size"), p.defaults and p.defaults.img_size)]
    sizes += [(("training", "pipeline", "datasets", name, "img_size"), ds and ds.img_size)
              for name, ds in (p.datasets or {}).items()]
    return issues + [ConfigIssue(format_path(loc), f"{size} must be {why}") for loc, size in sizes
                     if size is not None and size % unit]


def _inherited(step: StepConfig, *keys: str) -> str:
    """' (inherited from training.pipeline.defaults)' when the step itself does not set keys."""
    node: Any = step
    for key in keys:
        if node is None or key not in node.model_fields_set or getattr(node, key) is None:
            return " (inherited from training.pipeline.defaults)"
        node = getattr(node, key)
    return ""


def _step_issues(i: int, step: StepConfig, p: Pieces) -> tuple[list[ConfigIssue], bool]:
    """Issues of one step, and whether it uses LPIPS."""
    at = lambda *keys: format_path((*STEPS, i, *keys))  # noqa: E731 - short path builder
    issues: list[ConfigIssue] = []
    globals_ = p.globals_
    try:
        s = resolve_step(i, step, p.defaults, globals_, None)
    except MissingStepValue as missing:
        if missing.field != "dataset" or p.datasets is not None:
            issues.append(ConfigIssue(at(missing.field), missing.message))
        # Go on with placeholders so that the step's other problems are reported too.
        placeholders = dataclasses.replace(globals_, n_epochs=globals_.n_epochs or 1, dataset=globals_.dataset or "")
        s = resolve_step(i, step, p.defaults, placeholders, None)
    if not any(getattr(s, m) for m in modes.PRIMARY_MODES):
        extra = " (train_spade and use_lpips only modify a VAE/GAN step)" if s.train_spade or s.use_lpips else ""
        issues.append(ConfigIssue(at(), f"no training mode: enable at least one of "
                                        f"{', '.join(modes.PRIMARY_MODES)}{extra}"))
    if s.train_spade and not modes.has_vae_mode(s):
        issues.append(ConfigIssue(at("train_spade"), "needs train_vae or gan_training (SPADE is part of the "
                                                     "expander)" + _inherited(step, "train_spade")))
    for term in modes.IMAGE_STAT_TERMS:  # inherited from `defaults` by a step without train_vae: no effect there
        key = f"train_{term}"
        if not s.train_vae and getattr(step, key):  # written on this step
            issues.append(ConfigIssue(at(key), f"needs train_vae (the {term} term is a reconstruction loss)"))
    if s.use_lpips and not s.train_vae:
        issues.append(ConfigIssue(at("use_lpips"), "needs train_vae (LPIPS is a reconstruction loss)"
                                  + _inherited(step, "use_lpips")))
    given = merged_step_fields(step, p.defaults)
    if p.model is not None and p.model.text_encoder.type == "pretrained":
        issues += frozen_pretrained_issues(s, at, lambda key: _inherited(step, key))
    issues += _freeze_issues(step, s, given, at)
    issues += _optimization_issues(step, s, given, at)
    issues += _transition_issues(step, s, given, at)
    for group, scheduler in s.optimization.schedulers.items():
        if scheduler.type == "ReduceLROnPlateau" and s.transition_on.mode != "loss_threshold":
            issues.append(ConfigIssue(at("optimization", "schedulers", group, "type"), "ReduceLROnPlateau watches "
                                      "transition_on.metric, so it needs mode: loss_threshold (here it would never "
                                      "change the lr)" + _inherited(step, "optimization")))
    if p.datasets is not None and s.dataset and s.dataset not in p.datasets and "dataset" in given:
        issues.append(ConfigIssue(at("dataset"), _unknown("dataset", s.dataset, p.datasets)
                                  + _inherited(step, "dataset")))
    return issues, bool(s.use_lpips and s.train_vae)


def _freeze_issues(step, s: ResolvedStep, given: dict, at) -> list[ConfigIssue]:
    """Names must be components; `unfreeze` only what gets a gradient. Freezing what a mode trains is allowed (the
    step trains the rest), unless it leaves nothing to train."""
    issues = []
    trainable = modes.trainable_components(s)
    freeze, unfreeze = given.get("freeze", []), given.get("unfreeze", [])
    for field, names in (("freeze", freeze), ("unfreeze", unfreeze)):
        note = _inherited(step, field)
        for j, name in enumerate(names):
            if name not in modes.COMPONENTS:
                issues.append(ConfigIssue(at(field, j), _unknown("component", name, modes.COMPONENTS) + note))
            elif field == "unfreeze" and name not in trainable:
                issues.append(ConfigIssue(at(field, j), f"{name} gets no gradient in this step, so unfreezing it "
                                          f"trains nothing (it can train: {', '.join(sorted(trainable)) or 'none'})"
                                          f"{note}"))
    by_modes = modes.mode_trained_components(s)
    if by_modes and not modes.trained_components(s) and not issues:
        issues.append(ConfigIssue(at("freeze"), f"freezes everything this step's modes "
                                  f"({', '.join(modes.mode_labels(s))}) train ({', '.join(sorted(by_modes))}), so "
                                  f"nothing is left to train; unfreeze one of them or turn the mode off"
                                  f"{_inherited(step, 'freeze')}"))
    return issues


def _optimization_issues(step, s: ResolvedStep, given: dict, at) -> list[ConfigIssue]:
    """The step's own optimizer/scheduler entries (merged over the defaults' entry of the same group)."""
    if step.optimization is None:
        return []
    issues, used = [], modes.optimizer_groups(s)
    merged = Optimization(**given.get("optimization", {}))
    for kind in ("optimizers", "schedulers"):
        if kind not in step.optimization.model_fields_set:
            continue
        for group in getattr(step.optimization, kind):
            loc = (*STEPS, s.index, "optimization", kind, group)
            issues += _group_issues(group, getattr(merged, kind)[group], kind, loc)
            if group in modes.OPTIMIZER_GROUPS and group not in used:
                members = ", ".join(modes.OPTIMIZER_GROUPS[group])
                issues.append(ConfigIssue(format_path(loc), f"this step does not train {members} (it trains: "
                                          f"{', '.join(sorted(modes.trained_components(s))) or 'nothing'})"))
    return issues


def defaults_optimization_issues(defaults: StepDefaults | None) -> list[ConfigIssue]:
    """Entries of pipeline.defaults.optimization, checked once (a step uses only the groups it trains)."""
    if defaults is None or defaults.optimization is None:
        return []
    issues = []
    for kind in ("optimizers", "schedulers"):
        for group, cfg in getattr(defaults.optimization, kind).items():
            issues += _group_issues(group, cfg, kind, ("training", "pipeline", "defaults", "optimization", kind, group))
    return issues


def _group_issues(group: str, cfg, kind: str, loc: tuple) -> list[ConfigIssue]:
    if group not in modes.OPTIMIZER_GROUPS:
        return [ConfigIssue(format_path(loc), _unknown("optimizer group", group, modes.OPTIMIZER_GROUPS))]
    return (optimizer_issues if kind == "optimizers" else scheduler_issues)(cfg, loc)


def _transition_issues(step, s: ResolvedStep, given: dict, at) -> list[ConfigIssue]:
    t, written = s.transition_on, given.get("transition_on", {})
    if t.mode == "epoch":
        return [ConfigIssue(at("transition_on", key), "only used with mode: loss_threshold (mode epoch runs "
                                                      f"n_epochs){_inherited(step, 'transition_on', key)}")
                for key in ("metric", "threshold", "max_epochs") if key in written]
    issues = []
    for key in ("metric", "threshold"):
        if written.get(key) is None:
            issues.append(ConfigIssue(at("transition_on", key), "required for mode: loss_threshold"))
    metric = written.get("metric")
    if metric is not None and metric not in modes.ALL_METRICS:
        issues.append(ConfigIssue(at("transition_on", "metric"), _unknown("metric", metric, modes.ALL_METRICS)))
    elif metric is not None and metric not in modes.threshold_metrics(s):
        why = " (vae_loss is always 0 in GAN-only mode)" if metric == "vae_loss" and s.gan_training else ""
        issues.append(ConfigIssue(at("transition_on", "metric"), f"{metric!r} is not produced by this step{why}; "
                                  f"it can watch: {', '.join(modes.threshold_metrics(s)) or 'nothing'}"))
    return issues
