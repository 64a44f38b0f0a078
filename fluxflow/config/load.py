"""`load_config`: file or dict in, a validated `PipelineConfig` out, or a `ConfigError` listing every problem."""
from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from fluxflow.config.checks import Pieces, semantic_issues
from fluxflow.config.errors import ConfigError, ConfigIssue, did_you_mean, format_path
from fluxflow.config.executor import process_issues, resources_issues
from fluxflow.config.legacy import apply_legacy
from fluxflow.config.overrides import apply_overrides
from fluxflow.config.pretrained_text import with_pretrained_width
from fluxflow.config.promotion import promotion_issues
from fluxflow.config.replicates import replicate_issues
from fluxflow.config.schema import (DATASET_TYPES, SECRET_VALUE, DataConfig, DatasetConfig, ModelConfig, OutputConfig,
                                    PipelineConfig, TrainingConfig, implicit_datasets)
from fluxflow.config.steps import StepConfig, StepDefaults, StepGlobals


@dataclass
class LoadedConfig:
    config: PipelineConfig
    warnings: list[str] = field(default_factory=list)  # legacy keys: what was mapped or has no effect here
    source: Path | None = None  # the file it came from (None for a dict)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-4` (no dot) as a string; here it is a number. Duplicate keys are errors, not overwrites."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _mapping_without_duplicates(loader: _Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first on line {seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def read_yaml(path: Path) -> Any:
    """The parsed file; ConfigError for a missing/unreadable file or broken YAML."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue("(file)", f"not found: {path}")], str(path)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigIssue("(file)", f"cannot read {path}: {exc}")], str(path)) from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue("(file)", f"broken YAML: {' '.join(str(exc).split())}")], str(path)) from None


def load_config(source: str | Path | dict[str, Any], overrides: list[str] | tuple[str, ...] = ()) -> LoadedConfig:
    """Validate a config file (path) or an already-parsed config (dict, e.g. a Prefect parameter), with the
    `--set KEY=VALUE` overrides applied first (fluxflow/config/overrides.py)."""
    path = None if isinstance(source, dict) else Path(source)
    raw = source if isinstance(source, dict) else read_yaml(path)
    label = str(path) if path else None
    if raw is None:
        raise ConfigError([ConfigIssue("(file)", "is empty; a config needs at least training.pipeline.steps")], label)
    if not isinstance(raw, dict):
        raise ConfigError([ConfigIssue("(file)", f"must be a mapping of sections, not {type(raw).__name__}")], label)
    if overrides:
        try:
            raw = apply_overrides(raw, list(overrides), _Loader)
        except ConfigError as exc:
            raise ConfigError(exc.issues, label) from None

    raw, warnings, issues = apply_legacy(raw)
    raw = with_pretrained_width(raw)
    config: PipelineConfig | None = None
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        issues += issues_from_validation(exc, PipelineConfig)
    issues += semantic_issues(_pieces(raw, config))
    if config is not None and not issues:  # cross-section rules need the whole config, and valid steps
        issues += replicate_issues(config.written_steps(), config.training.replicates)
    if config is not None and not issues:
        issues += promotion_issues(config) + resources_issues(config) + process_issues(config)
    if issues:
        raise ConfigError(_dedupe(issues), label)
    return LoadedConfig(config=config, warnings=warnings, source=path)


def issues_from_validation(exc: ValidationError, root: type[BaseModel]) -> list[ConfigIssue]:
    """pydantic's errors as issues: dotted paths, 'did you mean' for unknown keys."""
    issues = []
    for err in exc.errors():
        loc, kind = tuple(err["loc"]), err["type"]
        tag = _dataset_type(loc)
        path = format_path(loc[:4] + loc[5:] if tag else loc)  # a dataset's path without its type's tag
        if kind == "extra_forbidden" and loc[-2:-1] == ("defaults",) and loc[-1] in ("name", "after", "description"):
            issues.append(ConfigIssue(path, "is set per step, not in training.pipeline.defaults"))
        elif kind == "extra_forbidden" and tag and len(loc) == 6:
            takes = [f for f in DATASET_TYPES[tag].model_fields if f != "type"]
            issues.append(ConfigIssue(path, f"not a field of a {tag} dataset{did_you_mean(str(loc[-1]), takes)} "
                                            f"(it takes: {', '.join(takes)})"))
        elif kind in ("union_tag_invalid", "union_tag_not_found"):  # a dataset's type, wrong or missing
            got = err["ctx"].get("tag")
            types = ", ".join(repr(t) for t in DATASET_TYPES)
            issues.append(ConfigIssue(f"{path}.type", f"must be one of {types} (got {got!r})"
                                      f"{did_you_mean(got, DATASET_TYPES)}" if got else f"required: one of {types}"))
        elif kind == "missing" and tag:
            issues.append(ConfigIssue(path, f"required for a {tag} dataset"))
        elif kind == "extra_forbidden":
            known = _fields_at(root, loc[:-1])
            issues.append(ConfigIssue(path, f"unknown key{did_you_mean(str(loc[-1]), known)}"))
        elif kind == "missing":
            issues.append(ConfigIssue(path, _missing_message(loc)))
        elif kind == "too_short" and loc[-1] == "steps":
            issues.append(ConfigIssue(path, "needs at least one step"))
        else:
            got = err.get("input")
            shown = "" if isinstance(got, (dict, list)) or kind == SECRET_VALUE else f" (got {got!r})"
            if kind == "string_type" and isinstance(got, bool):
                shown += "; YAML reads unquoted yes/no/on/off as true/false: quote the value"
            issues.append(ConfigIssue(path, f"{err['msg']}{shown}"))
    return issues


def _dataset_type(loc: tuple) -> str | None:
    """The type of the dataset an error is in: pydantic puts a discriminated union's tag after the dataset's name."""
    if loc[:3] == ("training", "pipeline", "datasets") and len(loc) > 4 and loc[4] in DATASET_TYPES:
        return loc[4]
    return None


def _missing_message(loc: tuple) -> str:
    if loc == ("training",) or loc == ("training", "pipeline"):
        return "required: declare the steps under training.pipeline.steps (see configs/quickstart.yaml)"
    return "required"


def _fields_at(root: type[BaseModel], loc: tuple) -> list[str]:
    """Field names of the model at `loc` under `root` (for "did you mean" suggestions); [] if there is none."""
    ann: Any = root
    for part in loc:
        ann = _strip_optional(ann)
        origin = typing.get_origin(ann)
        if ann == DatasetConfig and part in DATASET_TYPES:  # the tag pydantic adds: the dataset's type
            ann = DATASET_TYPES[part]
        elif isinstance(ann, type) and issubclass(ann, BaseModel) and isinstance(part, str):
            info = ann.model_fields.get(part)
            if info is None:
                return []
            ann = info.annotation
        elif origin is list and isinstance(part, int):
            ann = typing.get_args(ann)[0]
        elif origin is dict:
            ann = typing.get_args(ann)[1]
        else:
            return []
    ann = _strip_optional(ann)
    return list(ann.model_fields) if isinstance(ann, type) and issubclass(ann, BaseModel) else []


def _strip_optional(ann: Any) -> Any:
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return args[0] if len(args) == 1 else ann
    return ann


def _pieces(raw: dict, config: PipelineConfig | None) -> Pieces:
    """What semantic checks can use: the whole config when it parsed, else each part that parses on its own."""
    pipeline = _get(raw, "training", "pipeline")
    raw_steps = pipeline.get("steps") if isinstance(pipeline, dict) else None
    raw_steps = raw_steps if isinstance(raw_steps, list) else []
    if config is not None:
        pipe = config.training.pipeline
        return Pieces(raw_steps, list(pipe.steps), pipe.defaults, config.step_globals(), pipe.datasets,
                      pipe.default_dataset, config.model, config.data, config.output, config.model_checkpoint)
    defaults = _parse(StepDefaults, _get(raw, "training", "pipeline", "defaults") or {})
    datasets = _parse_datasets(_get(raw, "training", "pipeline", "datasets"))
    default_dataset = _get(raw, "training", "pipeline", "default_dataset")
    if datasets is not None:
        datasets, default_dataset = implicit_datasets(datasets, default_dataset if isinstance(default_dataset, str)
                                                      else None)
    output = _parse(OutputConfig, _get(raw, "output") or {})
    data = _parse(DataConfig, _get(raw, "data") or {})
    return Pieces(raw_steps, [_parse(StepConfig, s) for s in raw_steps], defaults,
                  _lenient_globals(_get(raw, "training"), default_dataset), datasets,
                  default_dataset if isinstance(default_dataset, str) else None,
                  _parse(ModelConfig, _get(raw, "model") or {}), data, output,
                  raw.get("model_checkpoint") if isinstance(raw.get("model_checkpoint"), str) else None)


def _lenient_globals(training: Any, dataset: Any) -> StepGlobals:
    """Step globals from the fields of `training` that validate as TrainingConfig's own; where one does not (it is
    already reported), its default stands in."""
    training = training if isinstance(training, dict) else {}
    values = {}
    for key in ("batch_size", "workers", "lr", "n_epochs", "max_steps", "seed"):
        info = TrainingConfig.model_fields[key]
        given = training.get(key, info.default)
        values[key] = _parse(Annotated[info.annotation, info], given)
        if values[key] is None and given is not None:  # given but invalid: not also called missing in every step
            values[key] = 1 if key == "n_epochs" else info.default
    return StepGlobals(dataset=dataset if isinstance(dataset, str) else None, **values)


def _parse(model: Any, value: Any) -> Any:
    try:
        return TypeAdapter(model).validate_python(value)
    except ValidationError:
        return None


def _parse_datasets(value: Any) -> dict[str, DatasetConfig] | None:
    if value is None:
        return {}
    if not isinstance(value, dict):
        return None
    return {name: _parse(DatasetConfig, ds) for name, ds in value.items()}  # None: broken (already reported)


def _get(raw: Any, *keys: str) -> Any:
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw


_SECTION_ORDER = ("(file)", "model", "data", "training", "output", "tracking", "promotion", "model_checkpoint", "optimization")


def _dedupe(issues: list[ConfigIssue]) -> list[ConfigIssue]:
    """Unique issues in file order: by section, then by step index; otherwise in the order found."""
    def key(issue: ConfigIssue) -> tuple[int, int]:
        section = re.split(r"[.\[]", issue.path, maxsplit=1)[0]
        rank = _SECTION_ORDER.index(section) if section in _SECTION_ORDER else len(_SECTION_ORDER)
        step = re.match(r"training\.pipeline\.steps\[(\d+)\]", issue.path)
        return rank, int(step.group(1)) if step else -1

    return sorted(dict.fromkeys(issues), key=key)
