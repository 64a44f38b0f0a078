"""Prefect artifacts: what the Prefect UI shows about a step and about the whole pipeline.

Per step: a link to its MLflow run and a table of its final metrics and checkpoint. Per pipeline: a summary table and a
progress bar updated as steps finish. Keys are stable so that each key's history in the UI's Artifacts page is the
history of one pipeline (named after its output directory) across runs; Prefect allows only lowercase letters, digits
and dashes in keys.
"""
from __future__ import annotations

import os
import re
from typing import Any
from uuid import UUID

from flows import env  # noqa: F401  (must precede prefect)

from prefect.artifacts import (create_link_artifact, create_progress_artifact, create_table_artifact,
                                update_progress_artifact)

from fluxflow.checkpoints.ref import StepOutcome

def artifact_key(*parts: str) -> str:
    """'Quickstart', 'vae_gan', 'result' -> 'quickstart-vae-gan-result'."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]", "-", "-".join(parts).lower())).strip("-")


def mlflow_run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI page of a run: the tracking server itself when it is one; for a local (sqlite) store
    `FLUXFLOW_MLFLOW_UI_URL`, else where `mlflow ui` (scripts/mlflow_ui.sh) serves it, the loopback port
    `FLUXFLOW_MLFLOW_PORT` (5000 unless set: a UI started on another port got links to :5000)."""
    port = os.environ.get("FLUXFLOW_MLFLOW_PORT") or 5000
    local = os.environ.get("FLUXFLOW_MLFLOW_UI_URL") or f"http://127.0.0.1:{port}"
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else local
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def publish_step(pipeline: str, outcome: StepOutcome) -> None:
    """The step's link to MLflow (when it has a run) and its result table."""
    ref, result = outcome
    step = result.step_name
    if outcome.run_url:
        create_link_artifact(link=outcome.run_url, link_text=f"MLflow run of step {step}",
                             key=artifact_key(pipeline, step, "mlflow"),
                             description=f"Parameters, metrics and samples of step `{step}` in MLflow.")
    fields = [*((name, _fmt(value)) for name, value in sorted(result.final_metrics.items())),
              ("outcome", result.outcome), ("epochs_done", result.epochs_done), ("trained", result.trained),
              ("global_step", ref.global_step), ("checkpoint", ref.uri), ("sha256", ref.sha256)]
    rows = [{"field": name, "value": str(value)} for name, value in fields]
    create_table_artifact(rows, key=artifact_key(pipeline, step, "result"),
                          description=f"Final metrics and checkpoint of step `{step}`.")


def publish_summary(pipeline: str, outcomes: list[StepOutcome], skipped: dict[str, str]) -> None:
    """The pipeline's table, one row per step: the flow's outcomes, then how each other step ended (`skipped`:
    `failed: ERROR`, `not run: a failed`, ...)."""
    columns = ("step", "outcome", "epochs", "final metrics", "checkpoint", "mlflow run")
    rows = []
    for outcome in outcomes:
        ref, result = outcome
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(result.final_metrics.items()))
        outcome_text = result.outcome + ("" if result.trained else " (already complete)")
        rows.append(dict(zip(columns, (result.step_name, outcome_text, str(result.epochs_done), metrics, ref.uri,
                                       outcome.run_url or ""))))
    rows += [dict(zip(columns, (step, why, "", "", "", ""))) for step, why in skipped.items()]
    create_table_artifact(rows, key=artifact_key(pipeline, "summary"), description="Pipeline steps and their results.")


def start_progress(pipeline: str, n_steps: int) -> UUID:
    return create_progress_artifact(0.0, key=artifact_key(pipeline, "progress"),
                                    description=f"Steps finished out of {n_steps}.")


def update_progress(artifact_id: UUID, finished: int, n_steps: int) -> None:
    update_progress_artifact(artifact_id, 100.0 * finished / max(n_steps, 1))
