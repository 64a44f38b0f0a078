"""docs/CONFIG.md and the config models agree: every field a user can set is documented, and every default its tables
give as a literal value (a number, true/false, null, a quoted name or list) is the model's default."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml
from pydantic_core import PydanticUndefined

from fluxflow.config.executor import ExecutorConfig, StepResources
from fluxflow.config.optim import OPTIMIZER_PARAMS, SCHEDULE_PARAMS, SCHEDULER_PARAMS, OptimizerConfig, SchedulerConfig
from fluxflow.config.promotion import PromotionConfig
from fluxflow.config.schema import (DataConfig, DistributedConfig, FolderDataset, ModelConfig, OutputConfig,
                                    PipelineSection, ShapesDataset, TextEncoderConfig, TrackingConfig, TrainingConfig,
                                    WebDatasetConfig)
from fluxflow.config.steps import TRANSITION_WINDOW, ReplicatesConfig, StepConfig, StepSettings, Transition

DOC = (Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md").read_text()
STEP_SECTIONS = ("Identity and order", "Training modes", "Caches (`cache_latents`, `cache_text`)", "Freezing",
                 "Loss weights and training details", "Transition (`transition_on`) and `on_missed`")
# Table heading -> (models with the prefix their fields are written with, the column of the default).
SECTIONS = {
    "`model`": ([(ModelConfig, ""), (TextEncoderConfig, "text_encoder.")], 2),
    "`data`": ([(DataConfig, "")], 2),
    "`training`": ([(TrainingConfig, ""), (DistributedConfig, "distributed."), (ExecutorConfig, "executor.")], 2),
    "`training.pipeline`": ([(PipelineSection, "")], 2),
    "Datasets (`training.pipeline.datasets.<name>`)": ([(ShapesDataset, ""), (FolderDataset, ""),
                                                        (WebDatasetConfig, "")], 2),
    **{name: ([(StepSettings, ""), (Transition, "transition_on.")], 1 if name == "Training modes" else 2)
       for name in STEP_SECTIONS},
    "`output`": ([(OutputConfig, "")], 2),
    "`tracking`": ([(TrackingConfig, "")], 2),
    "`promotion`": ([(PromotionConfig, "")], 2),
}
# Fields documented as a section of their own (their keys have rows) rather than as one row.
SECTION_FIELDS = {"text_encoder", "distributed", "executor", "optimization", "transition_on"}
# Defaults resolved after validation (the model holds None: "inherit"): what resolution gives.
RESOLVED = {"transition_on.mode": "epoch", "transition_on.window": TRANSITION_WINDOW}


def tables() -> dict[str, dict[str, list[str]]]:
    """Heading -> field name -> the row's cells, for every table row whose first cell names fields in backticks."""
    found: dict[str, dict[str, list[str]]] = {}
    heading = ""
    for line in DOC.splitlines():
        if line.startswith("#"):
            heading = line.strip("# ")
        elif line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            for name in re.findall(r"`([^`]+)`", cells[0]):
                found.setdefault(heading, {})[name] = cells
    return found


def literal(cell: str, actual):
    """The cell's default as a 1-tuple, or None when it is prose (`training.lr`, "see below", "required"). A bare word
    is a value only where the default is a string (`auto`), else it names where the value comes from (`seed`)."""
    text = cell.replace("`", "").strip()
    if text == "null" or text.startswith("null "):
        return (None,)
    if text in ("true", "false"):
        return (text == "true",)
    try:
        return (ast.literal_eval(text),)
    except (ValueError, SyntaxError):
        return (text,) if isinstance(actual, str) and re.fullmatch(r"[a-z_]+", text) else None


def model_default(info):
    if info.default is not PydanticUndefined:
        return info.default
    return info.default_factory() if info.default_factory is not None else PydanticUndefined


@pytest.mark.parametrize("heading", list(SECTIONS))
def test_the_table_defaults_are_the_models_defaults(heading):
    models, column = SECTIONS[heading]
    fields = {prefix + name: info for model, prefix in models for name, info in model.model_fields.items()}
    rows = tables()[heading]
    wrong = []
    for name, cells in rows.items():
        if name in ("name", "after", "description"):  # StepConfig's own
            assert name in StepConfig.model_fields
            continue
        assert name in fields, f"{heading}: `{name}` is documented but is not a field"
        actual = RESOLVED.get(name, model_default(fields[name]))
        if hasattr(actual, "model_dump"):
            actual = actual.model_dump(exclude_none=True, exclude_defaults=True)
        names = re.findall(r"`([^`]+)`", cells[0])
        cell = cells[column]
        if len(names) > 1 and cell.count(",") == len(names) - 1:  # one row for several fields, a value each
            cell = cell.split(",")[names.index(name)]
        given = literal(cell, actual)
        if given is None:
            continue
        if given[0] != actual:
            wrong.append(f"{name}: documented {cells[column]!r}, model {actual!r}")
    assert wrong == []


def test_every_field_a_user_sets_is_documented():
    documented = {name for rows in tables().values() for name in rows}
    missing = sorted({f"{model.__name__}.{name}" for models, _ in SECTIONS.values() for model, prefix in models
                      for name in model.model_fields
                      if prefix + name not in documented and name not in SECTION_FIELDS and name != "n_epochs"})
    # Fields described in prose: the step's n_epochs, the resources, replicates and optimizer/scheduler parameters.
    prose = [*StepResources.model_fields, *ReplicatesConfig.model_fields, "n_epochs",
             *OptimizerConfig.model_fields, *SchedulerConfig.model_fields]
    missing += [f"`{name}` nowhere" for name in prose if f"`{name}`" not in DOC and f"`{name} " not in DOC
                and f"{name} (" not in DOC]
    assert missing == []


def test_the_optimizer_and_scheduler_defaults_are_the_documented_ones():
    rows = tables()["Optimization (`optimization`)"]
    def shown(row: str, name: str):
        found = re.search(rf"`{name}` \(((?:\[[^\]]*\])|[^,);]+)", row)
        return ast.literal_eval(found.group(1).replace("true", "True").replace("false", "False")) if found else None

    for kind, params in OPTIMIZER_PARAMS.items():
        for name, value in params.items():
            if kind == "Adam" and name != "weight_decay":  # "same as AdamW, `weight_decay` 0.0"
                continue
            expected = list(value) if isinstance(value, tuple) else value
            given = shown(rows[kind][1], name)
            if kind == "Adam":
                given = float(rows[kind][1].split("`weight_decay` ")[1])
            assert given == expected, (kind, name, rows[kind][1])
    for kind, params in SCHEDULER_PARAMS.items():
        for name, value in params.items():
            if value is not None and name != "mode":
                assert shown(rows[kind][1], name) == value, (kind, name, rows[kind][1])
    assert rows["interval"][1] == f"`{SCHEDULE_PARAMS['interval']}`"
    assert rows["warmup_steps"][1] == str(SCHEDULE_PARAMS["warmup_steps"])


def test_every_promotion_metric_is_documented():
    from fluxflow.config.promotion import PROMOTION_METRICS

    row = tables()["`promotion`"]["metric"][1]
    assert [metric for metric in PROMOTION_METRICS if f"`{metric}`" not in row] == []


def test_readme_pipeline_example_loads_without_warnings():
    """The README's "The pipeline file" is the first config a new user copies: it must validate and warn of nothing
    (a step with `n_epochs` under a loss_threshold transition with its own max_epochs warned "has no effect")."""
    from fluxflow.config.load import load_config

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = re.search(r"## The pipeline file\n+```yaml\n(.*?)```", readme, re.S)
    assert example is not None, "README.md lost its 'The pipeline file' example"
    loaded = load_config(yaml.safe_load(example.group(1)))
    assert [step.name for step in loaded.config.training.pipeline.steps] == ["vae_warmup", "spade_off", "spade_on"]
    assert loaded.warnings == []
