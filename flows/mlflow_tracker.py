"""MLflow side of tracking: one parent run per pipeline (output directory), one nested run per trained step.

Everything goes through an explicit `MlflowClient` and run ids, never the fluent `mlflow.start_run` API: the active
run is thread-local and branches train in parallel threads (PITFALLS.md). Metrics go out as one `log_batch` per log
interval, never one call per metric (1000 single calls take 4-19 s on sqlite).

Which run a step writes to:
- The parent run is found by the output directory (`fluxflow.output_dir` tag): re-running a pipeline continues its
  parent run, so that its steps stay one tree in the MLflow UI.
- A step's nested run is opened lazily, at its first metric/image/artifact: a step the runner skips as already
  complete opens nothing. A step that resumes from a mid-step checkpoint, or is retried in the same session, continues
  the run found by (`fluxflow.output_dir`, `fluxflow.step_key`) instead of opening a duplicate. A step trained from
  scratch again (output wiped) gets a fresh run so that metric histories never overlap.
"""
from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flows import env  # noqa: F401  (must precede mlflow)

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

if TYPE_CHECKING:  # only for annotations: this module must import without torch
    from fluxflow.checkpoints.ref import CheckpointRef, StepResult
    from fluxflow.train.tracking import Progress

TAG_KIND = "fluxflow.kind"  # "pipeline" | "step"
TAG_OUTPUT_DIR = "fluxflow.output_dir"
TAG_STEP_KEY = "fluxflow.step_key"
TAG_STEP_NAME = "fluxflow.step_name"
TAG_PARENT_STEP = "fluxflow.parent_step"
TAG_SESSION = "fluxflow.session"
TAG_OUTCOME = "fluxflow.outcome"
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


def _now_ms() -> int:
    return int(time.time() * 1000)


class MlflowTracker:
    """`fluxflow.train.tracking.Tracker` that records one pipeline step as a nested MLflow run.

    `session` identifies one execution of the pipeline (the Prefect flow-run id): a retried step of the same session
    continues its run even when it had to restart from scratch.
    """

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str,
        output_dir: str | Path,
        session: str = "",
    ):
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.output_dir = str(output_dir)
        self.session = session
        self.run_id: str | None = None  # set once a run is open (or found, for a skipped step)
        self._step = None
        self._step_key = ""
        self._resumed = False

    # -- Tracker protocol ---------------------------------------------------------------------------------------

    def step_started(self, step, step_key: str, n_steps: int, resumed: bool) -> None:
        self._step, self._step_key, self._resumed = step, step_key, resumed
        self.run_id = None

    def log_metrics(self, metrics: dict[str, float], progress: Progress) -> None:
        run_id = self._ensure_run()
        stamp, step = _now_ms(), int(progress.global_step)
        values = {**metrics, "epoch": progress.epoch}
        if math.isfinite(progress.sec_per_batch):  # NaN for evaluation results, which are not timed batches
            values["sec_per_batch"] = progress.sec_per_batch
        batch = [Metric(key, float(value), stamp, step) for key, value in values.items() if value is not None]
        self.client.log_batch(run_id, metrics=batch)

    def log_image(self, path: Path) -> None:
        self.client.log_artifact(self._ensure_run(), str(path), artifact_path="samples")

    def log_artifact(self, path: Path) -> None:
        if Path(path).is_file():  # e.g. the metrics JSONL, absent when nothing was logged
            self.client.log_artifact(self._ensure_run(), str(path))

    def step_finished(self, ref: CheckpointRef, result: StepResult) -> None:
        if self.run_id is None and not result.trained:
            # Skipped as already complete: link to the run that trained it, open nothing.
            self.run_id = self._existing_run_id()
            return
        run_id = self._ensure_run()
        stamp = _now_ms()
        finals = [Metric(FINAL_PREFIX + k, float(v), stamp, ref.global_step) for k, v in result.final_metrics.items()]
        tags = {
            TAG_OUTCOME: result.outcome,
            "fluxflow.epochs_done": result.epochs_done,
            "fluxflow.global_step": ref.global_step,
            "fluxflow.checkpoint_uri": ref.uri,
            "fluxflow.checkpoint_sha256": ref.sha256,
            "fluxflow.resumed_from": result.resumed_from,
        }
        self.client.log_batch(run_id, metrics=finals, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.log_dict(run_id, {"ref": ref.to_dict(), "result": result.to_dict()}, "checkpoint_ref.json")
        self.client.set_terminated(run_id, "FINISHED")

    # -- beyond the protocol: called by the task around run_step -------------------------------------------------

    def step_failed(self, status: str = "FAILED") -> None:
        """End the step's run as FAILED, or KILLED when it was interrupted (the next run continues it)."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def link_completed(self, step_key: str) -> str | None:
        """For a step the runner skipped (it reports nothing then): the run that trained it, if any. Opens nothing."""
        self._step_key = step_key
        self.run_id = self._existing_run_id()
        return self.run_id

    def record_from_files(self, step, step_key: str, ref: CheckpointRef, result: StepResult) -> None:
        """Record a step that ran where no tracker could reach it (torchrun ranks in a child process) from the files
        rank 0 wrote: the metrics JSONL (one batched call, MLflow splits it into 1000-metric requests), this step's
        samples, and the result. Same run rules as live tracking."""
        self.step_started(step, step_key, 0, resumed=result.resumed_from is not None)
        out = Path(self.output_dir)
        metrics_file = out / "graph" / f"training_metrics_{step.name}.jsonl"
        points = []
        if metrics_file.is_file():
            for line in metrics_file.read_text(encoding="utf-8").splitlines():
                record = json.loads(line)
                stamp = int(datetime.fromisoformat(record["timestamp"]).timestamp() * 1000)
                points += [Metric(k, float(v), stamp, int(record["global_step"]))
                           for k, v in record["metrics"].items() if v is not None]
        if points:
            self.client.log_batch(self._ensure_run(), metrics=points)
        for image in sorted((out / "samples").glob(f"{step.name}_{step.index + 1:03d}_*")):
            self.log_image(image)
        self.log_artifact(metrics_file)
        self.step_finished(ref, result)

    # -- internals ----------------------------------------------------------------------------------------------

    def _runs_of_step(self) -> list:
        return find_runs(
            self.client,
            self.experiment_id,
            {TAG_KIND: "step", TAG_OUTPUT_DIR: self.output_dir, TAG_STEP_KEY: self._step_key},
        )

    def _existing_run_id(self) -> str | None:
        found = self._runs_of_step()
        return found[0].info.run_id if found else None

    def _reusable_run_id(self) -> str | None:
        for run in self._runs_of_step():
            if self._resumed or (self.session and run.data.tags.get(TAG_SESSION) == self.session):
                return run.info.run_id
        return None

    def _ensure_run(self) -> str:
        if self.run_id is not None:
            return self.run_id
        if self._step is None:
            raise RuntimeError("MlflowTracker: step_started() must be called before logging")
        run_id = self._reusable_run_id()
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in self._tags().items()])
        else:
            run = self.client.create_run(self.experiment_id, tags=self._tags(), run_name=self._step.name)
            run_id = run.info.run_id
            params = flatten_params(self._step.model_dump(mode="json"))
            self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
        self.run_id = run_id
        return run_id

    def _tags(self) -> dict[str, str]:
        step = self._step
        return {
            PARENT_RUN_ID: self.parent_run_id,
            TAG_KIND: "step",
            TAG_OUTPUT_DIR: self.output_dir,
            TAG_STEP_KEY: self._step_key,
            TAG_STEP_NAME: step.name,
            TAG_PARENT_STEP: step.parent or "",
            TAG_SESSION: self.session,
        }
