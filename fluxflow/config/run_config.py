"""The config a run trains, resolved once where the run enters: `fluxflow-train`, or the flow when a deployment (or a
test) starts it without the command line.

Resolution: the file loaded (load_config); the run's output directory and device written into it; `{date}` in the
output directory filled with the run's day (UTC, so each night of a scheduled deployment trains into a directory of its
own, and a retry of that night resumes in it); the data checked (a run cannot start without it; validation alone does
not need it). The device stays a choice: `auto` is resolved where the step trains, which need not be here.

The flow hands its tasks `run_dict(config)`, which is only re-validated. No torch here: the command line resolves
before it imports torch.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from fluxflow.config.errors import ConfigError, ConfigIssue
from fluxflow.config.file_checks import data_issues
from fluxflow.config.load import LoadedConfig, from_overrides, issues_from_validation, load_config
from fluxflow.config.promotion import searchable_problem
from fluxflow.config.schema import PipelineConfig
from fluxflow.storage.location import local_path, remote_uri

RESOLVED = "resolved_for_run"  # the mark of a resolved config's dict: it is taken as it is


def resolve_run_config(source: str | Path | dict[str, Any], *, output_dir: str | None = None,
                       device: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                       day: str | None = None, check_data: bool = True, output_dir_name: str = "output_dir",
                       device_name: str = "device", overrides_name: str = "overrides") -> LoadedConfig:
    """The run's config (and the warnings of its loading); `day` fills `{date}` (default: today, UTC).
    `output_dir_name`, `device_name`, `overrides_name`: what the caller calls `output_dir`, `device` and `overrides`,
    for the errors about their values (the flow's parameter names; `--output-dir`, `--device`, `--set` on the command
    line): the file is not what is wrong. `check_data` False: `--validate-pipeline`, which accepts a config written
    before its data is in place. A dict made by `run_dict` is only re-validated: its `overrides` were applied where
    the run entered."""
    # Taken as unset, an empty value silently trained into the config's own output folder (where another run's steps
    # are "already complete") or on the automatic device: refused, as fluxflow-train refuses `--output-dir ""`.
    empty = [name for name, value in ((output_dir_name, output_dir), (device_name, device)) if value == ""]
    if empty:
        raise ConfigError([ConfigIssue(name, "expected a value, got an empty one") for name in empty],
                          None if isinstance(source, dict) else str(source))
    if isinstance(source, dict) and source.get(RESOLVED):
        if output_dir or device:
            raise ValueError("a resolved config takes no output_dir or device: resolve it from its source")
        return LoadedConfig(config=run_config_of(source))
    label = None if isinstance(source, dict) else str(source)  # how load_config names the file in its errors
    loaded = load_config(source, overrides, overrides_name)
    raw = loaded.config.model_dump(mode="json")

    template = str(output_dir or raw["output"]["output_path"])
    path = template.replace("{date}", day or datetime.now(timezone.utc).strftime("%Y-%m-%d"))
    # `~` as the dataset paths take it (bash leaves it as it is after `=`): not a folder named `~` in the working one.
    raw["output"]["output_path"] = path if remote_uri(path) else os.path.expanduser(path)
    if device:
        raw["training"]["device"] = device
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        # The caller's value, not the file's, is what is wrong: name it as the caller does.
        given = {"output.output_path": output_dir and output_dir_name, "training.device": device and device_name}
        issues = [ConfigIssue(given[i.path], i.message) if given.get(i.path) else i
                  for i in issues_from_validation(exc)]
        raise ConfigError(issues, label) from None
    # The run's MLflow records are found by this absolute path (flows/mlflow_runs.py output_dir_of): known only here.
    if problem := searchable_problem(remote_uri(path) or str(local_path(config.output.output_path).resolve())):
        raise ConfigError([ConfigIssue(output_dir and output_dir_name or "output.output_path", problem)], label)
    if check_data and (missing := data_issues(config)):  # a dataset's path may be an override's
        names = [step.name for step in config.training.pipeline.steps]
        raise ConfigError(from_overrides(missing, overrides, names, overrides_name), label)
    return LoadedConfig(config=config, warnings=loaded.warnings, legacy_warnings=loaded.legacy_warnings,
                        dated="{date}" in template)


def run_dict(config: PipelineConfig) -> dict[str, Any]:
    """The resolved config as the flow passes it to its tasks (and the command line to the flow): JSON, marked."""
    return {**config.model_dump(mode="json"), RESOLVED: True}


def run_config_of(resolved: dict[str, Any]) -> PipelineConfig:
    """A task's config: the resolved dict re-validated, nothing read or mapped again."""
    return PipelineConfig.model_validate({k: v for k, v in resolved.items() if k != RESOLVED})
