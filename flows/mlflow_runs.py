"""MLflow runs of a pipeline: the tags that identify them, how they are found, and the pipeline's parent run.

The parent run is found by the output directory (`fluxflow.output_dir` tag): re-running a pipeline continues its parent
run, so that its steps stay one tree in the MLflow UI. A step's nested run is found by output directory, step key and
step name (flows/mlflow_step_run.py).
"""
from __future__ import annotations

import json
import os
from typing import Any

from flows import env  # noqa: F401  (must precede mlflow)

from mlflow.entities import RunTag
from mlflow.tracking import MlflowClient

TAG_KIND = "fluxflow.kind"  # "pipeline" | "step"
TAG_OUTPUT_DIR = "fluxflow.output_dir"
TAG_STEP_KEY = "fluxflow.step_key"
TAG_STEP_NAME = "fluxflow.step_name"
TAG_PARENT_STEP = "fluxflow.parent_step"
TAG_SESSION = "fluxflow.session"
TAG_OUTCOME = "fluxflow.outcome"
TAG_OVERRIDES = "fluxflow.overrides"  # the pipeline run's `--set KEY=VALUE` list, as JSON
PARENT_RUN_ID = "mlflow.parentRunId"
FINAL_PREFIX = "final/"


def resolve_tracking_uri(configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the config's `tracking.tracking_uri`, else MLflow's default (./mlflow.db, absolute)."""
    import mlflow

    return os.environ.get("MLFLOW_TRACKING_URI") or configured or mlflow.get_tracking_uri()


def experiment_id_for(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another process created it between the two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten_params(values: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"optimization.optimizers.vae.lr": "0.0001", ...} (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return flat


def _quoted(value: str) -> str:
    """A string literal for an MLflow filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def find_runs(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> list:
    """Runs carrying all the given tags, newest first."""
    where = " and ".join(f"tags.`{key}` = {_quoted(value)}" for key, value in tags.items())
    return list(client.search_runs([experiment_id], filter_string=where, order_by=["attributes.start_time DESC"]))


def open_pipeline_run(
    client: MlflowClient, experiment_id: str, output_dir: str, run_name: str, tags: dict[str, str]
) -> str:
    """The parent run of the pipeline writing to `output_dir`: reused when one exists, else created. Marked RUNNING."""
    found = find_runs(client, experiment_id, {TAG_KIND: "pipeline", TAG_OUTPUT_DIR: output_dir})
    all_tags = {TAG_KIND: "pipeline", TAG_OUTPUT_DIR: output_dir, **tags}
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in all_tags.items()])
        return run_id
    return client.create_run(experiment_id, tags=all_tags, run_name=run_name).info.run_id
