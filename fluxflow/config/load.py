"""`load_config`: file or dict in, a validated `PipelineConfig` out, or a `ConfigError` listing every problem.

Types and ranges of single fields are the schema's job. The rules that span fields (step names, the step DAG, modes vs
freeze lists, metrics, datasets, sizes, LPIPS; `semantic_issues`) run on whatever parts of the file parsed, so that
one broken step does not hide the problems of the others; every problem names its path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import TypeAdapter, ValidationError

from fluxflow.config import modes
from fluxflow.config.errors import STEPS, ConfigError, ConfigIssue, did_you_mean, format_path
from fluxflow.config.executor import executor_warnings, process_issues, resources_issues
from fluxflow.config.file_checks import checkpoint_issues, lpips_issues, not_a_regular_file, text_encoder_issues, \
    with_pretrained_width
from fluxflow.config.heldout_pairs import draws_pairs
from fluxflow.config.legacy import apply_legacy, get_in
from fluxflow.config.optim import Optimization, number_problem, optimizer_issues, scheduler_issues
from fluxflow.config.promotion import promotion_issues
from fluxflow.config.schema import (DATASET_TYPES, IMPLICIT_DATASET, SECRET_VALUE, DataConfig, DatasetConfig,
                                    ModelConfig, OutputConfig, PipelineConfig, TrainingConfig, implicit_datasets)
from fluxflow.config.steps import NAME_LIMIT, TRAINING_GLOBALS, ResolvedStep, StepConfig, \
    StepDefaults, Transition, merged_step_fields, replicate_issues, replicated_names, resolution_shift, resolve_step, \
    shift_range_problem
from fluxflow.wording import counted


@dataclass
class LoadedConfig:
    config: PipelineConfig
    warnings: list[str] = field(default_factory=list)  # legacy keys mapped or dropped, a step lr no optimizer uses
    # Those of `warnings` about keys of the original tool (fluxflow/config/legacy.py): the only ones --quiet leaves
    # out; a value of ours that has no effect is said even then.
    legacy_warnings: list[str] = field(default_factory=list)
    dated: bool = False  # its output directory held `{date}`, filled with the run's day (fluxflow/config/run_config.py)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; here it is a number. Duplicate keys are errors, not overwrites, and
    so is an alias inside the value of its own anchor (`seed: &a [*a]`): a value that contains itself, which every
    reader of the tree (unshared first) followed without end, a RecursionError traceback."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.open_anchors: list[str | None] = []  # of the sections being read, innermost last

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent) and (alias := self.peek_event()).anchor in self.open_anchors:
            raise yaml.composer.ComposerError(None, None, f"the alias *{alias.anchor} refers to itself: it is inside "
                                              f"the value of &{alias.anchor}, which cannot contain itself",
                                              alias.start_mark)
        return super().compose_node(parent, index)

    def compose_sequence_node(self, anchor: str | None) -> yaml.SequenceNode:
        return self._section(anchor, super().compose_sequence_node)

    def compose_mapping_node(self, anchor: str | None) -> yaml.MappingNode:
        return self._section(anchor, super().compose_mapping_node)

    def _section(self, anchor: str | None, compose: Any) -> Any:
        self.open_anchors.append(anchor)
        try:
            return compose(anchor)
        finally:
            self.open_anchors.pop()


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *step`: merged by construct_mapping, the keys written
            continue                                   # beside it override the merged ones (YAML's merge keys)
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


# A placeholder at the start of a value (`output_path: {date}-run`): YAML reads `{` there as a mapping's start.
_BRACE_AT_VALUE_START = re.compile(r"(?:^|[:-]\s)\s*\{\w+\}")
BRACE_HINT = "YAML reads a value that starts with { as a mapping: quote it, e.g. \"{date}/run\""


def broken_yaml(exc: yaml.YAMLError, text: str) -> str:
    """The YAML error in one line, with BRACE_HINT when the line it stopped at has a value that starts with a
    {placeholder}. The file is named by the issue, not as PyYAML's "<unicode string>"."""
    mark = getattr(exc, "problem_mark", None)
    lines = text.splitlines()
    line = lines[mark.line] if mark is not None and mark.line < len(lines) else ""
    said = " ".join(str(exc).replace(' in "<unicode string>",', "").split())
    return f"{said}; {BRACE_HINT}" if _BRACE_AT_VALUE_START.search(line) else said


def read_yaml(path: Path) -> Any:
    """The parsed file; ConfigError for a missing/unreadable file, one that is not a regular file, or broken YAML."""
    try:
        problem = not_a_regular_file(path)
        if problem is None:
            text = path.read_text(encoding="utf-8")
            return unshared(yaml.load(text, Loader=_Loader))  # noqa: S506 - SafeLoader's subclass
    except FileNotFoundError:
        problem = f"not found: {path}"
    except (OSError, UnicodeDecodeError) as exc:
        problem = f"cannot read {path}: {exc}"
    except yaml.YAMLError as exc:
        problem = f"broken YAML: {broken_yaml(exc, text)}"
    raise ConfigError([ConfigIssue("(file)", problem)], str(path))


def unshared(tree: Any) -> Any:
    """A copy of a parsed tree in which no mapping or list appears twice. An anchor (`&warm`) and its aliases, or a
    merge key (`<<: *warm`), share one object: `--set` on one step changed every step made from the block (a deepcopy
    keeps the sharing)."""
    if isinstance(tree, dict):
        return {key: unshared(value) for key, value in tree.items()}
    if isinstance(tree, list):
        return [unshared(value) for value in tree]
    return tree


# `--set KEY=VALUE`: change a value of the config file without editing it (CLI flag and deployment parameter).
# KEY is a dotted path into the file (`training.seed`, `model.flow_depth`); a step is addressed by its name:
# `training.pipeline.steps.flow.lr` is the `lr` of the step named `flow` (a name may be a number: `steps.1.lr`,
# `datasets.2024.size`; elsewhere a number is a list index, refused: lists are set whole). VALUE is YAML, read as the
# file is read (`3e-4` is a number, `[0, 1]` a list, `{type: AdamW}` a mapping). Missing sections on the way are
# created; the result is validated like the file, so an unknown key gets the file's message ("unknown key (did you
# mean 'lr'?)").
# Overrides apply in order, before the keys of the original tool are mapped (fluxflow/config/legacy.py).

IMPLICIT_SHAPES = ("training", "pipeline", "datasets", IMPLICIT_DATASET)


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], label: str | None,
                    name: str = "--set") -> tuple[dict[str, Any], list[str | None]]:
    """A copy of the parsed file with every override set, and per override the KEY of the first section on its way
    that it created (None: it created none), for from_overrides; ConfigError naming each one that cannot be placed,
    or the first that is not KEY=VALUE ('training.pipeline.steps.flow.lr=3e-4') or whose value is broken YAML.
    `name`: what the caller calls an override (`--set`; the flow's parameter `overrides`)."""
    raw, issues, created = unshared(raw), [], []
    for text in overrides:  # every one that cannot be placed is named, not only the first
        made: list[int] = []  # the depth of each section this one creates
        key, sep, written = text.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            issues.append(ConfigIssue(f"{name} {text}", "expected KEY=VALUE with a dotted KEY, e.g. training.seed=1 "
                                                        "or training.pipeline.steps.flow.lr=3e-4"))
            continue
        try:
            value = yaml.load(written, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as exc:
            issues.append(ConfigIssue(f"{name} {key}", f"the value is broken YAML: {broken_yaml(exc, written)}"))
            continue
        if parts[:4] == list(IMPLICIT_SHAPES) and len(parts) > 4 and not get_in(raw, *IMPLICIT_SHAPES[:3]):
            # A field of the built-in dataset a file without datasets trains on (schema.implicit_datasets): it made a
            # new dataset of that one field ("type: required").
            _set(raw, [*IMPLICIT_SHAPES, "type"], "shapes", "shapes", made)  # its type, as implicit_datasets makes it
        if problem := _set(raw, parts, value, written.strip(), made):
            issues.append(ConfigIssue(f"{name} {'.'.join(parts)}", problem))
        created.append(".".join(parts[:made[0] + 1]) if made else None)  # read only when every one was placed
    if issues:
        raise ConfigError(issues, label)
    return raw, created


def from_overrides(issues: list[ConfigIssue], overrides: list[str] | tuple[str, ...], steps: list,
                   name: str = "--set", created: list[str | None] | None = None) -> list[ConfigIssue]:
    """`issues`, each one about a value an override wrote (its path, or a path under it) or in a section it created
    (`created`: apply_overrides') saying so: `(from --set KEY)`. Under the file's label ("1 problem in
    configs/x.yaml") the file was blamed for the command's value. `steps`: the step names in order (an issue names a
    step by its index, an override by its name). The override's value is not repeated: it may be a secret
    (tracking.tracking_uri), and the issue says what is wrong with it."""
    def issue_path(key: str) -> str:
        parts: list[str | int] = list(key.split("."))
        if tuple(parts[:len(STEPS)]) == STEPS and len(parts) > len(STEPS) and parts[len(STEPS)] in steps:
            parts[len(STEPS)] = steps.index(parts[len(STEPS)])
        return format_path(parts)

    # (the issue paths an override wrote: its KEY's, and that of the section it created (`--set ...shapess.size=8`
    # leaves shapess without its type), its KEY as given), in order
    keys = [text.partition("=")[0].strip() for text in overrides]
    written = [([issue_path(key), *([issue_path(made)] if made else [])], key)
               for key, made in zip(keys, created or [None] * len(keys))]

    def source(path: str) -> str | None:  # the last override to write it: they apply in order
        return next((key for paths, key in reversed(written) for at in paths
                     if path == at or path.startswith((f"{at}.", f"{at}["))), None)

    return [ConfigIssue(issue.path, f"{issue.message} (from {name} {key})") if (key := source(issue.path)) else issue
            for issue in issues]


# Mappings whose keys are names the user chose: `datasets.2024` names a dataset (it was read as a list index, "an
# item of a list cannot be set"), as `resources.custom.2` names a Ray resource.
_NAME_MAPPINGS = ("datasets", "custom")


def _is_name(key: Any) -> bool:
    """A step's or a mapping's name as YAML may have read it: text, or a number written unquoted (not true/false)."""
    return isinstance(key, (str, int)) and not isinstance(key, bool)


_KINDS = {bool: "true or false", int: "a number", float: "a number", str: "a string", list: "a list"}  # YAML's words


def _set(raw: dict[str, Any], parts: list[str], value: Any, written: str, made: list[int]) -> str | None:
    """Set raw[parts...] = value, stepping into a step by its name under training.pipeline.steps; the problem or None.
    `written`: the value as given, for the example of a list set whole; `made`: gets the depth of each section
    created on the way."""
    node: Any = raw
    for depth, part in enumerate(parts):
        at, last = ".".join(parts[:depth]), depth == len(parts) - 1
        indexed = re.fullmatch(r"(.+)\[(\d+)\]", part)  # `steps[2]`, as validation messages write a path
        if indexed and (*parts[:depth], indexed.group(1)) == STEPS and isinstance(node, dict):
            steps = node.get("steps") if isinstance(node.get("steps"), list) else []
            index, rest = int(indexed.group(2)), ".".join(parts[depth + 1:]) or "lr"
            name = steps[index].get("name") if index < len(steps) and isinstance(steps[index], dict) else None
            return (f"a step is addressed by its name, not its index: {'.'.join(STEPS)}."
                    f"{name if isinstance(name, str) else 'NAME'}.{rest}=...")
        if isinstance(node, list) and tuple(parts[:depth]) == STEPS:
            # A name YAML read as a number (`name: 1`) is matched as written: the file's validation then says to
            # quote it, where this said "no step named '1' (steps: none)".
            named = [s for s in node if isinstance(s, dict) and _is_name(s.get("name"))]
            names = [str(s["name"]) for s in named]
            if last:
                return f"a whole step cannot be set; set its keys, e.g. {'.'.join(parts)}.lr=3e-4"
            if part not in names:
                return f"no step named {part!r}{did_you_mean(part, names)} (steps: {', '.join(names) or 'none'})"
            node = named[names.index(part)]
            continue
        if isinstance(node, dict) and part not in node:
            # A key YAML read as a number (`2024:` in datasets): set there, and the file's validation says to quote it.
            part = next((key for key in node if _is_name(key) and str(key) == part), part)
        if isinstance(part, str) and part.isdigit() and (isinstance(node, list) or isinstance(node, dict) and (
                part not in node and (depth == 0 or parts[depth - 1] not in _NAME_MAPPINGS))):
            # A list index: `betas.0=0.5` would otherwise make the mapping {'0': 0.5} ("not a valid tuple").
            index = int(part)
            if isinstance(node, list) and index < len(node):
                example = yaml.safe_dump([*node[:index], value, *node[index + 1:]], default_flow_style=True,
                                         width=2**16).strip()
            else:
                example = f"[{written}, ...]" if index == 0 else f"[..., {written}]"
            return f"an item of a list cannot be set; set the whole list, e.g. {at}={example}"
        if not isinstance(node, dict):  # its type, not its value: that may be a secret (tracking.tracking_uri)
            return f"{at} is {_KINDS.get(type(node), type(node).__name__)}, not a section"
        if last:
            node[part] = value
        elif node.get(part) is None:  # absent, or an empty section (`defaults:` with nothing under it)
            node[part] = {}
            made.append(depth)
        node = node[part]
    return None


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = (),
                overrides_name: str = "--set") -> LoadedConfig:
    """Validate a config file (path) or an already-parsed config (dict, e.g. a Prefect parameter), with the
    `--set KEY=VALUE` overrides applied first (apply_overrides; `overrides_name`: what the caller calls them)."""
    path = None if isinstance(source, dict) else Path(source)
    raw = source if isinstance(source, dict) else read_yaml(path)
    label = str(path) if path else None
    if raw is None:
        raise ConfigError([ConfigIssue("(file)", "is empty; a config needs at least training.pipeline.steps")], label)
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue("(file)", f"must be a mapping of sections, not {type(raw).__name__}")], label)
    # Top-level keys starting with x- hold blocks that anchors repeat (as Docker Compose's extension fields): not read.
    raw = {key: value for key, value in raw.items() if not (isinstance(key, str) and key.startswith("x-"))}
    raw, created = apply_overrides(raw, overrides, label, overrides_name)

    raw, warnings, issues = apply_legacy(raw)
    raw = with_pretrained_width(raw)
    config: PipelineConfig | None = None
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        issues += issues_from_validation(exc, raw)
    issues += semantic_issues(raw)
    if config is not None and not issues:  # cross-section rules need the whole config, and valid steps
        issues += replicate_issues(config.written_steps(), config.training.replicates)
    if config is not None and not issues:
        issues += (promotion_issues(config) + resources_issues(config) + process_issues(config)
                   + _shapes_batch_issues(config) + _shapes_channel_issues(config) + _shift_issues(config))
    if issues:  # a step is named by its index in an issue, by its name in an override
        names = [get_in(step, "name", kind=str) for step in get_in(raw, *STEPS, kind=list) or []]
        raise ConfigError(from_overrides(_dedupe(issues), overrides, names, overrides_name, created), label)
    ours = (_unused_lr_warnings(config) + _unused_field_warnings(config) + _overridden_warnings(config)
            + _unused_dataset_warnings(config) + _weightless_vae_warnings(config) + executor_warnings(config))
    return LoadedConfig(config=config, warnings=warnings + ours, legacy_warnings=warnings)


def _unused_dataset_warnings(config: PipelineConfig) -> list[str]:
    """A `shapes` dataset's `holdout_pairs_seed` without a count of pairs to draw: accepted without a word (and, until
    weights_dataset, it trained every step again for the same weights)."""
    return [f"training.pipeline.datasets.{name}.holdout_pairs_seed: has no effect: it draws a count of holdout_pairs, "
            + ("and holdout_pairs lists its pairs" if isinstance(ds.holdout_pairs, list) else
               "and holdout_pairs sets none")
            for name, ds in config.training.pipeline.datasets.items()
            if ds.type == "shapes" and ds.holdout_pairs_seed is not None and not draws_pairs(ds.holdout_pairs)]


def _unused_field_warnings(config: PipelineConfig) -> list[str]:
    """A loss or EMA field written on a step whose modes never read it (config/modes.py unused_fields): accepted and
    ignored, it looked like a setting of the step (`lambda_adv` on a step without a GAN). Those of the defaults are
    for the steps that use them, and are not said."""
    warnings = []
    for step, written in zip(config.training.pipeline.steps, config.written_steps()):
        unused = modes.unused_fields(written)
        for name in step.model_dump(exclude_none=True):
            if name in unused and not (name == "adaptive_adv_weight" and not written.adaptive_adv_weight):
                warnings.append(f"{format_path((*STEPS, written.index, name))}: has no effect: {unused[name]}")
    return warnings


def _weightless_vae_warnings(config: PipelineConfig) -> list[str]:
    """A step that trains the compressor or expander while every loss term reaching them is weighted 0: it ran,
    showed a VAE loss of 0.0 and a gradient norm of 0.0 on every batch, and its plan said "Trains: compressor,
    expander"."""
    warnings = []
    for step in config.written_steps():
        weights = modes.vae_loss_weights(step)
        trained = sorted(modes.trained_components(step) & {"compressor", "expander"})
        if weights and trained and not any(weights.values()):
            them, they = ("it", "it") if len(trained) == 1 else ("them", "they")
            warnings.append(f"{format_path((*STEPS, step.index))}: trains {' and '.join(trained)} with every loss "
                            f"term that reaches {them} weighted 0 ({', '.join(weights)}): {they} will not change")
    return warnings


def _overridden_warnings(config: PipelineConfig) -> list[str]:
    """A step global (`training.<key>`) or a field of `training.pipeline.defaults` that every step sets for itself
    (steps.py: the step over the defaults over the globals), and a replicated step's own `seed` (each replica trains
    with one of training.replicates.seeds instead): accepted, it changed no step (a --set of it retrained nothing),
    so it is said. A seed is also set for itself by every replicated step. lr: _unused_lr_warnings."""
    training, pipe = config.training, config.training.pipeline
    replicated = set(replicated_names(config.written_steps(), training.replicates)) if training.replicates else set()
    by_replicates = "each replica trains with one of training.replicates.seeds"
    warnings = [f"{format_path((*STEPS, i, 'seed'))}: has no effect: the step is replicated, and {by_replicates}"
                for i, step in enumerate(pipe.steps) if step.name in replicated and step.seed is not None]
    for key in (key for key in TRAINING_GLOBALS if key != "lr"):
        replaced = key == "seed" and bool(replicated)
        own = all(getattr(step, key) is not None or replaced and step.name in replicated for step in pipe.steps)
        why = f"every step sets its own {key}" + (f" or is replicated ({by_replicates})" if replaced else "")
        if own and getattr(pipe.defaults, key) is not None:
            warnings.append(f"training.pipeline.defaults.{key}: has no effect: {why}")
        # training.<key> as written (a default no one wrote is no setting); a step takes it only where neither the
        # step nor the defaults sets one
        if (own or getattr(pipe.defaults, key) is not None) and key in training.model_fields_set \
                and getattr(training, key) is not None:
            warnings.append(f"training.{key}: has no effect: {why}" + ("" if own else " or training.pipeline.defaults "
                                                                                   "sets it"))
    return warnings


def _unused_lr_warnings(config: PipelineConfig) -> list[str]:
    """The defaults' `lr`, which no step may take: each sets its own, or every optimizer it trains does (a step's own
    is said by _unused_field_warnings: config/modes.py unused_fields). Not training.lr: the global default that the
    shipped configs write, and a step key's value since keys exist."""
    pipe, warnings = config.training.pipeline, []
    takes_lr = [step.name for step, written in zip(pipe.steps, config.written_steps())
                if step.lr is None and written.lr_read]
    if pipe.defaults.lr is not None and not takes_lr:
        warnings.append("training.pipeline.defaults.lr: has no effect: every step sets its own lr or every optimizer "
                        "of it does")
    return warnings


def _other_section(key: str, loc: tuple) -> str:
    """' (it is a field of output: output.log_interval)' for a key written at the top of a section or of a step
    that is another section's (`training.checkpoint_save_interval`, a step's `log_interval`), or of the step's
    transition (a step's `metric`), '' otherwise. Promotion's fields (metric, enabled, alias) are not a step's."""
    in_step = loc[:3] in (STEPS, ("training", "pipeline", "defaults")) and len(loc) == (5 if loc[:3] == STEPS else 4)
    if len(loc) == 1:  # `base: &b {...}` kept only for its anchor was refused with no way out
        return " (a block kept only to be repeated by an anchor goes under a key starting with x-: x-base: &b {...})"
    if not (len(loc) == 2 or in_step):
        return ""
    if in_step and key in Transition.model_fields:
        return f" (it is a field of the step's transition_on: transition_on.{key})"
    sections = [name for name, field in PipelineConfig.model_fields.items()
                if name != loc[0] and not (in_step and name == "promotion")
                and key in getattr(field.annotation, "model_fields", {})]
    return f" (it is a field of {sections[0]}: {sections[0]}.{key})" if sections else ""


def issues_from_validation(exc: ValidationError, raw: Any = None) -> list[ConfigIssue]:
    """pydantic's errors as issues: dotted paths, 'did you mean' for unknown keys. `raw`: what was validated, which
    tells a key YAML read as a number (`2024:`) from a list's position (_keys_as_written)."""
    issues = []
    for err in exc.errors():
        loc, kind, msg = tuple(err["loc"]), err["type"], err["msg"]
        if loc[-1:] == ("[key]",) and kind == "string_type":  # a key of a dict[str, ...]: said as of other mappings
            loc, kind, msg = loc[:-1], "invalid_key", "Keys should be strings"
        # The type of the dataset an error is in: pydantic puts a discriminated union's tag after the dataset's name.
        datasets_loc = loc[:3] == ("training", "pipeline", "datasets") and len(loc) > 4
        tag = loc[4] if datasets_loc and loc[4] in DATASET_TYPES else None
        path = format_path(_keys_as_written(loc[:4] + loc[5:] if tag else loc, raw))  # without the dataset's tag
        if kind == "extra_forbidden" and loc[-2:-1] == ("defaults",) and loc[-1] in ("name", "after", "description"):
            message = "is set per step, not in training.pipeline.defaults"
        elif kind == "extra_forbidden" and tag and len(loc) == 6:
            takes = [f for f in DATASET_TYPES[tag].model_fields if f != "type"]
            message = (f"not a field of a {tag} dataset{did_you_mean(str(loc[-1]), takes)} "
                       f"(it takes: {', '.join(takes)})")
        elif kind in ("union_tag_invalid", "union_tag_not_found"):  # a dataset's type, wrong or missing
            got, types = err["ctx"].get("tag"), ", ".join(repr(t) for t in DATASET_TYPES)
            path += ".type"
            message = (f"must be one of {types} (got {got!r}){did_you_mean(got, DATASET_TYPES)}" if got else
                       f"required: one of {types}")
        elif kind == "missing" and tag:
            message = f"required for a {tag} dataset"
        elif kind == "extra_forbidden":
            known = err.get("ctx", {}).get("fields", [])  # the fields of the model with the key (optim.StrictModel)
            message = f"unknown key{did_you_mean(str(loc[-1]), known) or _other_section(str(loc[-1]), loc)}"
        elif kind == "missing" and loc in (("training",), ("training", "pipeline")):
            message = "required: declare the steps under training.pipeline.steps (see configs/quickstart.yaml)"
        elif kind == "missing":
            message = "required"
        elif kind == "too_short" and loc[-1] == "steps":
            message = "needs at least one step"
        elif kind == "model_type" and err.get("input") is None and loc in (("training",), ("training", "pipeline")):
            message = "is empty: declare the steps under training.pipeline.steps (see configs/quickstart.yaml)"
        elif kind == "model_type":  # pydantic named its class: "a valid dictionary or instance of TrainingConfig"
            empty = "; an empty section: leave the key out, or give it keys" if err.get("input") is None else ""
            message = f"must be a section of keys (got {err.get('input')!r}){empty}"
        elif kind == "list_type" and loc[-1] == "steps" and isinstance(err.get("input"), dict):
            message = "must be a list of steps, each starting with `- name: ...`, not a mapping by name"
        else:
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or kind == SECRET_VALUE else f" (got {got!r})"
            if kind in ("string_type", "invalid_key") and isinstance(got, bool):  # a key `on:`, say
                shown += "; YAML reads unquoted yes/no/on/off as true/false: quote the value"
            elif kind in ("string_type", "invalid_key") and isinstance(got, (int, float)):  # a step named 2024
                shown += "; YAML reads an unquoted number as a number: quote the value"
            elif kind == "string_type" and isinstance(got, dict) and len(got) == 1 and None in got.values():
                shown += f"; {BRACE_HINT}"  # `output_path: {date}` read as {"date": None}
            # a validator's ValueError: its own message, without pydantic's "Value error, " before it
            message = f"{msg.removeprefix('Value error, ')}{shown}"
        issues.append(ConfigIssue(path, message))
    return issues


def _keys_as_written(loc: tuple, tree: Any) -> tuple:
    """`loc` with each part that is a key of a mapping of `tree` as a str: format_path writes an int as a list's
    position (`steps[0]`), and a key YAML read as a number was written as one (`datasets[2024]`). Past a part that
    `tree` does not hold (pydantic's name of a union's member), an int stays a position."""
    parts = []
    for part in loc:
        if isinstance(tree, dict):  # the key as the file has it: pydantic writes a key `on:` (True) as 1
            key = part if isinstance(part, str) else next((k for k in tree if k == part), part)
            parts.append(str(key))
            tree = tree.get(key)
        else:
            parts.append(part)
            tree = tree[part] if isinstance(tree, list) and isinstance(part, int) and 0 <= part < len(tree) else None
    return tuple(parts)


_SECTION_ORDER = ("(file)", *PipelineConfig.model_fields, "optimization")  # optimization: the original tool's


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Unique issues in file order: by section, then by step index; otherwise in the order found."""
    def key(issue: ConfigIssue) -> tuple[int, int]:
        section = re.split(r"[.\[]", issue.path, maxsplit=1)[0]
        rank = _SECTION_ORDER.index(section) if section in _SECTION_ORDER else len(_SECTION_ORDER)
        step = re.match(r"training\.pipeline\.steps\[(\d+)\]", issue.path)
        return rank, int(step.group(1)) if step else -1

    return sorted(dict.fromkeys(issues), key=key)


# Rules that span fields. Step and dataset names become parts of file names and MLflow keys.
NAME_RE = re.compile(rf"^[A-Za-z0-9_-]{{1,{NAME_LIMIT}}}$")
NAME_RULE = f"must be 1-{NAME_LIMIT} letters, digits, '_' or '-' (it is used in file names)"


def _lenient_globals(training: dict, dataset: str | None) -> dict[str, Any]:
    """Step globals from the fields of `training` that validate as TrainingConfig's own; where one does not (it is
    already reported), its default stands in."""
    values = {}
    for key in TRAINING_GLOBALS:
        info = TrainingConfig.model_fields[key]
        given = training.get(key, info.default)
        # true/false and whole numbers past 64 bits are refused by the config's models (optim.StrictModel), not here
        parsed = _parse(Annotated[info.annotation, info], given)
        values[key] = None if number_problem(info.annotation, given) else parsed
        # Given but invalid (an explicit null of a field that has a value by default included): the default stands
        # in, so that it is reported once, not also called missing (or crash resolving) in every step.
        if values[key] is None and (given is not None or info.default is not None):
            values[key] = 1 if key == "n_epochs" else info.default
    return {**values, "dataset": dataset, "img_size": 32}  # sizes are checked as written (_size_issues)


def _parse(model: Any, value: Any) -> Any:
    try:
        return TypeAdapter(model).validate_python(value)
    except ValidationError:
        return None


def semantic_issues(raw: dict) -> list[ConfigIssue]:
    """The rules that span fields, on each part of the file that parses on its own (all of them when the whole config
    parsed, which then gives the same values). A part that does not parse is None (its own errors are already
    reported); a dataset that does not, None under its name."""
    raw_steps = get_in(raw, *STEPS, kind=list) or []
    part = lambda model, *keys: _parse(model, get_in(raw, *keys, kind=object) or {})  # noqa: E731 - None: did not parse
    datasets = get_in(raw, "training", "pipeline", "datasets", kind=object)
    # A name YAML read as a number (`2024:`) is the schema's issue; the rules take it as the name it was meant to be
    # (`default_dataset: "2024"`).
    datasets = {} if datasets is None else {str(name): _parse(DatasetConfig, ds) for name, ds in datasets.items()} \
        if isinstance(datasets, dict) else None
    default_dataset = get_in(raw, "training", "pipeline", "default_dataset", kind=str)
    if datasets is not None:
        datasets, default_dataset = implicit_datasets(datasets, default_dataset)
    steps, defaults = [_parse(StepConfig, s) for s in raw_steps], part(StepDefaults, *STEPS[:2], "defaults")
    model, globals_ = part(ModelConfig, "model"), _lenient_globals(get_in(raw, "training") or {}, default_dataset)
    names, afters = ([get_in(step, key, kind=str) for step in raw_steps] for key in ("name", "after"))
    issues = _name_issues(names) + _dag_issues(names, afters) + _dataset_issues(datasets, default_dataset)
    issues += _size_issues(model, part(DataConfig, "data"), part(OutputConfig, "output"), steps, defaults, datasets)
    issues += text_encoder_issues(model) + defaults_optimization_issues(defaults)
    issues += checkpoint_issues(get_in(raw, "model_checkpoint", kind=str))
    pretrained = model is not None and model.text_encoder.type == "pretrained"
    checked = {i: _step_issues(i, step, defaults, globals_, datasets, pretrained)  # index -> (issues, uses LPIPS)
               for i, step in enumerate(steps) if step is not None and defaults is not None}
    issues += [issue for step_issues, _ in checked.values() for issue in step_issues]
    return issues + lpips_issues([i for i, (_, uses_lpips) in checked.items() if uses_lpips])


def _unknown(kind: str, value: str, known) -> str:
    """E.g. no dataset is named 'shape' (did you mean 'shapes'?); datasets: shapes."""
    return f"no {kind} is named {value!r}{did_you_mean(value, known)}; {kind}s: {', '.join(known)}"


def _name_issues(names: list[str | None]) -> list[ConfigIssue]:
    issues, seen = [], {}
    for i, name in enumerate(names):
        if name is None:
            continue
        if not NAME_RE.match(name):
            issues.append(ConfigIssue((*STEPS, i, "name"), f"{name!r} {NAME_RULE}"))
        if name in seen:
            issues.append(ConfigIssue((*STEPS, i, "name"), f"duplicate step name {name!r} (also steps[{seen[name]}])"))
        seen.setdefault(name, i)
    return issues


def _dag_issues(names: list[str | None], afters: list[str | None]) -> list[ConfigIssue]:
    """`after:` names a known, other step; following parents never comes back to a step (no cycles)."""
    issues, index = [], {n: i for i, n in reversed(list(enumerate(names))) if n is not None}
    parent: dict[int, int | None] = {}
    for i, after in enumerate(afters):
        path = (*STEPS, i, "after")
        if after is None:
            parent[i] = i - 1 if i > 0 else None
        elif after == names[i]:
            issues.append(ConfigIssue(path, "a step cannot start from itself"))
        elif after not in index:
            issues.append(ConfigIssue(path, f"no step is named {after!r}{did_you_mean(after, index)}"))
        else:
            parent[i] = index[after]
    for start in parent:
        chain, node = [start], parent.get(start)
        while node is not None and node not in chain:
            chain.append(node)
            node = parent.get(node)
        if node == start == min(chain):  # a cycle, reported once: from its first step in the file
            first = min(i for i in chain if afters[i] is not None)
            loop = " -> ".join(str(names[i]) for i in [*chain, start])
            issues.append(ConfigIssue((*STEPS, first, "after"), f"steps start from each other in a cycle ({loop}, "
                                      "following 'after' and file order)"))
    return issues


def _dataset_issues(datasets: dict | None, default: str | None) -> list[ConfigIssue]:
    if datasets is None:
        return []
    issues = []
    for name, ds in datasets.items():
        loc = ("training", "pipeline", "datasets", name)
        if not NAME_RE.match(name):
            issues.append(ConfigIssue(loc, f"dataset name {name!r} {NAME_RULE}"))
        if ds is not None and ds.type == "shapes" and ds.holdout >= ds.size:
            issues.append(ConfigIssue((*loc, "holdout"), f"must be smaller than size ({ds.size})"))
        elif ds is not None and ds.type == "shapes" and ds.holdout == 0 and ds.holdout_pairs:
            # The unseen split draws `holdout` images of the held-out pairs (fluxflow/data/__init__.py): with 0 the
            # pairs were kept out of training and never scored.
            issues.append(ConfigIssue((*loc, "holdout"), "is 0, but holdout_pairs are scored on as many images of "
                                                         "the unseen pairs as holdout holds out: hold some out, or "
                                                         "leave holdout_pairs out"))
    if default is not None and default not in datasets:
        issues.append(ConfigIssue("training.pipeline.default_dataset", _unknown("dataset", default, datasets)))
    return issues


def _size_issues(model: ModelConfig | None, data: DataConfig | None, output: OutputConfig | None, steps: list,
                 defaults: StepDefaults | None, datasets: dict | None) -> list[ConfigIssue]:
    if model is None:
        return []
    m, issues = model, []
    if m.feature_maps_dim % 4 or m.feature_maps_dim % m.flow_heads:  # 2-D position embedding: 4 parts
        issues.append(ConfigIssue("model.feature_maps_dim", f"{m.feature_maps_dim} must be divisible by 4 and by "
                                                            f"model.flow_heads ({m.flow_heads})"))
    unit = m.downscale * m.patch_size
    why = f"a multiple of {unit} (model.downscale {m.downscale} x model.patch_size {m.patch_size})"
    sizes = [(("data", "img_size"), data and data.img_size)]
    sizes += [(("output", "sample_sizes", i), size) for i, size in enumerate(output and output.sample_sizes or [])]
    sizes += [((*STEPS, i, "img_size"), step and step.img_size) for i, step in enumerate(steps)]
    sizes += [(("training", "pipeline", "defaults", "img_size"), defaults and defaults.img_size)]
    sizes += [(("training", "pipeline", "datasets", name, "img_size"), ds and ds.img_size)
              for name, ds in (datasets or {}).items()]
    # A latent side of 1 (img_size 8 at downscale 8): GroupNorm then normalises one value per group, the compressor's
    # output no longer depends on its image, the VAE step learns nothing and the flow step's cache fails. A sample size
    # of 0 or less was taken as a multiple and failed the first sample.
    least = 2 * m.downscale  # a multiple of unit (patch_size is 1 or 2)
    small = f"must be at least {least}: a latent side of 2 or more at model.downscale {m.downscale}"
    return issues + [ConfigIssue(loc, f"{size} {small}" if size < least else f"{size} must be {why}")
                     for loc, size in sizes if size is not None and (size % unit or size < least)]


def _inherited(step: StepConfig, *keys: str) -> str:
    """' (inherited from training.pipeline.defaults)' when the step itself does not set keys."""
    node: Any = step
    for key in keys:
        if node is None or key not in node.model_fields_set or getattr(node, key) is None:
            return " (inherited from training.pipeline.defaults)"
        node = getattr(node, key)
    return ""


def _step_issues(i: int, step: StepConfig, defaults: StepDefaults, globals_: dict[str, Any], datasets: dict | None,
                 pretrained: bool) -> tuple[list[ConfigIssue], bool]:
    """Issues of one step, and whether it uses LPIPS. `pretrained`: the model's text encoder is a pretrained one."""
    at = lambda *keys: (*STEPS, i, *keys)  # noqa: E731 - a step field's path, which ConfigIssue writes dotted
    issues: list[ConfigIssue] = []

    def inherited(message: str, *keys) -> ConfigIssue:  # about step field keys[0], which may come from the defaults
        return ConfigIssue(at(*keys), message + _inherited(step, keys[0]))

    try:
        s = resolve_step(i, step, defaults, globals_, None)
    except ConfigError as missing:  # n_epochs or the dataset given nowhere
        if not missing.issues[0].path.endswith(".dataset") or datasets is not None:
            issues += missing.issues
        # Go on with placeholders so that the step's other problems are reported too.
        placeholders = {**globals_, "n_epochs": globals_["n_epochs"] or 1, "dataset": globals_["dataset"] or ""}
        s = resolve_step(i, step, defaults, placeholders, None)
    if not any(getattr(s, m) for m in modes.PRIMARY_MODES):
        extra = " (train_spade and use_lpips only modify a VAE/GAN step)" if s.train_spade or s.use_lpips else ""
        issues.append(ConfigIssue(at(), f"no training mode: enable at least one of "
                                        f"{', '.join(modes.PRIMARY_MODES)}{extra}"))
    if s.train_spade and not modes.has_vae_mode(s):
        issues.append(inherited("needs train_vae or gan_training (SPADE is part of the expander)", "train_spade"))
    elif s.train_spade and "expander" in s.freeze:  # it trained nothing, and the frozen expander's EMA drifted
        issues.append(inherited("trains the expander's SPADE, but the step freezes the expander (freeze); unfreeze "
                                "it or leave train_spade out", "train_spade"))
    # Written on this step; inherited from `defaults` by a step without train_vae, a term has no effect there.
    issues += [ConfigIssue(at(f"train_{term}"), f"needs train_vae (the {term} term is a reconstruction loss)")
               for term in modes.IMAGE_STAT_TERMS if not s.train_vae and getattr(step, f"train_{term}")]
    if s.use_lpips and not s.train_vae:
        issues.append(inherited("needs train_vae (LPIPS is a reconstruction loss)", "use_lpips"))
    given = merged_step_fields(step, defaults)
    if pretrained:
        frozen = ("a pretrained text encoder (model.text_encoder) stays frozen: its weights are read from its "
                  "directory, never trained or written to checkpoints")
        if s.train_diff_full:
            issues.append(inherited(f"{frozen}; use train_diff", "train_diff_full"))
        if "text_encoder" in s.unfreeze:
            issues.append(inherited(frozen, "unfreeze", s.unfreeze.index("text_encoder")))
    issues += _freeze_issues(s, given, inherited)
    issues += _optimization_issues(step, s, given, at)
    issues += _transition_issues(step, s, given, at)
    for group, scheduler in s.optimization.schedulers.items():
        if scheduler.type == "ReduceLROnPlateau" and s.transition_on.mode != "loss_threshold":
            issues.append(inherited("ReduceLROnPlateau watches transition_on.metric, so it needs mode: loss_threshold "
                                    "(here it would never change the lr)", "optimization", "schedulers", group, "type"))
    if datasets is not None and s.dataset and s.dataset not in datasets and "dataset" in given:
        issues.append(inherited(_unknown("dataset", s.dataset, datasets), "dataset"))
    return issues, bool(s.use_lpips and s.train_vae)


def _shapes_batch_issues(config: PipelineConfig) -> list[ConfigIssue]:
    """A `shapes` dataset has `size` items (its hold-out is a stream of its own) to fill one batch of each step that
    trains on it: known from the config alone, so said by validation, not when the step starts (after the steps
    before it had trained, with advice to lower a holdout that does not take from `size`)."""
    issues, seen = [], set()
    for step in config.written_steps():
        ds = config.dataset_for(step)
        if ds.type == "shapes" and ds.size < step.batch_size and step.dataset not in seen:
            seen.add(step.dataset)
            issues.append(ConfigIssue(("training", "pipeline", "datasets", step.dataset, "size"),
                                      f"{counted(ds.size, 'item')} {'is' if ds.size == 1 else 'are'} fewer than one "
                                      f"batch of {step.batch_size} (step "
                                      f"{step.name}); raise size or lower batch_size"))
    return issues


def _shapes_channel_issues(config: PipelineConfig) -> list[ConfigIssue]:
    """A flow step on a `shapes` dataset is scored by reading each drawn image's colour (evaluation/shapes_analyser.py,
    RGB only): with data.channels 1 or 4 the step trained, then failed its evaluation, and every rerun the same way."""
    if config.data.channels == 3:
        return []
    flows = [step.name for step in config.written_steps()
             if modes.has_flow_mode(step) and config.dataset_for(step).type == "shapes"]
    if not flows:
        return []
    return [ConfigIssue("data.channels", f"is {config.data.channels}, but the shapes dataset's evaluation reads the "
                                         f"colours of RGB images, and flow step {flows[0]} is evaluated on it: set 3, "
                                         "or train that step on a folder dataset")]


def _shift_issues(config: PipelineConfig) -> list[ConfigIssue]:
    """The shift a flow step trains and samples with, t_shift scaled to its img_size by t_shift_base_size, is in the
    range t_shift is (steps.SHIFT_RANGE): each may be in range while their product is not (t_shift_base_size
    1000000000 at 16 px: 1.6e-08, and the step trained on nan)."""
    issues = []
    for written, step in zip(config.training.pipeline.steps, config.written_steps()):
        if step.t_shift_base_size is None or not modes.has_flow_mode(step):
            continue
        shift = resolution_shift(step.t_shift, step.img_size, step.t_shift_base_size)
        if problem := shift_range_problem(shift):
            issues.append(ConfigIssue((*STEPS, step.index, "t_shift_base_size"),
                                      f"scales t_shift {step.t_shift:g} to {shift:.3g} at img_size {step.img_size} "
                                      f"(t_shift × img_size / t_shift_base_size); the shift {problem}"
                                      + _inherited(written, "t_shift_base_size")))
    return issues


def _freeze_issues(s: ResolvedStep, given: dict, inherited) -> list[ConfigIssue]:
    """Names must be components; `unfreeze` only what gets a gradient. Freezing what a mode trains is allowed (the
    step trains the rest), unless it leaves nothing to train. `inherited`: _step_issues' maker of a field's issue."""
    issues, trainable = [], modes.trainable_components(s)
    for which in ("freeze", "unfreeze"):
        for j, name in enumerate(given.get(which, [])):
            if name not in modes.COMPONENTS:
                issues.append(inherited(_unknown("component", name, modes.COMPONENTS), which, j))
            elif which == "unfreeze" and name not in trainable:
                issues.append(inherited(f"{name} gets no gradient in this step, so unfreezing it trains nothing (it "
                                        f"can train: {', '.join(sorted(trainable)) or 'none'})", which, j))
    by_modes = modes.mode_trained_components(s)
    if by_modes and not modes.trained_components(s) and not issues:
        issues.append(inherited(f"freezes everything this step's modes ({', '.join(modes.mode_labels(s))}) train "
                                f"({', '.join(sorted(by_modes))}), so nothing is left to train; unfreeze one of them "
                                "or turn the mode off", "freeze"))
    return issues


def _optimization_issues(step, s: ResolvedStep, given: dict, at) -> list[ConfigIssue]:
    """The step's own optimizer/scheduler entries (merged over the defaults' entry of the same group)."""
    if step.optimization is None:
        return []
    issues, used = [], modes.optimizer_groups(s)
    merged = Optimization(**given.get("optimization", {}))
    for kind in ("optimizers", "schedulers"):
        for group in getattr(step.optimization, kind):
            loc = at("optimization", kind, group)
            issues += _group_issues(group, getattr(merged, kind)[group], kind, loc)
            if group in modes.OPTIMIZER_GROUPS and group not in used:
                members = ", ".join(modes.OPTIMIZER_GROUPS[group])
                issues.append(ConfigIssue(loc, f"this step does not train {members} (it trains: "
                                          f"{', '.join(sorted(modes.trained_components(s))) or 'nothing'})"))
    return issues


def defaults_optimization_issues(defaults: StepDefaults | None) -> list[ConfigIssue]:
    """Entries of pipeline.defaults.optimization, checked once (a step uses only the groups it trains)."""
    if defaults is None or defaults.optimization is None:
        return []
    at = ("training", "pipeline", "defaults", "optimization")
    return [issue for kind in ("optimizers", "schedulers")
            for group, cfg in getattr(defaults.optimization, kind).items()
            for issue in _group_issues(group, cfg, kind, (*at, kind, group))]


def _group_issues(group: str, cfg, kind: str, loc: tuple) -> list[ConfigIssue]:
    if group not in modes.OPTIMIZER_GROUPS:
        return [ConfigIssue(loc, _unknown("optimizer group", group, modes.OPTIMIZER_GROUPS))]
    return (optimizer_issues if kind == "optimizers" else scheduler_issues)(cfg, loc)


def _transition_issues(step, s: ResolvedStep, given: dict, at) -> list[ConfigIssue]:
    t, written = s.transition_on, given.get("transition_on", {})
    if t.mode == "epoch":
        return [ConfigIssue(at("transition_on", key), "only used with mode: loss_threshold (mode epoch runs "
                                                      f"n_epochs){_inherited(step, 'transition_on', key)}")
                for key in ("metric", "threshold", "max_epochs", "window") if key in written]
    issues = [ConfigIssue(at("transition_on", key), "required for mode: loss_threshold")
              for key in ("metric", "threshold") if written.get(key) is None]
    metric, from_defaults = written.get("metric"), _inherited(step, "transition_on", "metric")
    if metric is not None and metric not in modes.ALL_METRICS:
        issues.append(ConfigIssue(at("transition_on", "metric"),
                                  _unknown("metric", metric, modes.ALL_METRICS) + from_defaults))
    elif metric is not None and metric not in modes.threshold_metrics(s):
        why = " (vae_loss is always 0 in GAN-only mode)" if metric == "vae_loss" and s.gan_training else ""
        issues.append(ConfigIssue(at("transition_on", "metric"), f"{metric!r} is not produced by this step{why}; "
                                  f"it can watch: {', '.join(modes.threshold_metrics(s)) or 'nothing'}"
                                  + from_defaults))
    return issues
