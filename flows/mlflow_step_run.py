"""The nested MLflow run of one pipeline step, written synchronously: what `MlflowTracker` (flows/mlflow_tracker.py)
has the tracking thread (flows/tracking_queue.py) do.

Which run a step writes to: the newest run found by (`fluxflow.output_dir`, `fluxflow.step_key`,
`fluxflow.step_name`) is continued when the step resumes from a mid-step checkpoint, when it is retried in the same
session, or when it was never closed (RUNNING after a kill, KILLED, FAILED): a step killed before its first checkpoint
trains again from batch 0 in the same run. Only a FINISHED run is left alone, for a step trained from scratch again
(its output wiped), which gets a fresh run.

No metric point is logged twice for the same key and step: a reopened run's last logged step of each metric is read
once, and every point at or below it is dropped (the batches between a step's last checkpoint and a kill are trained
and reported again on resume; `epoch` comes with both the last log interval and the evaluation of an epoch's end).
A reopened run then gets what its metrics file holds beyond those steps, and the samples it lacks: whatever a killed
process had not sent yet. A step found complete whose run was never opened gets its run from its files the same way.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from flows import env  # noqa: F401  (must precede mlflow)

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from flows.mlflow_names import (FINAL_PREFIX, PARENT_RUN_ID, TAG_CHECKPOINT_SHA256, TAG_CHECKPOINT_URI, TAG_EPOCHS_DONE,
                                 TAG_GLOBAL_STEP, TAG_KIND, TAG_OUTCOME, TAG_OUTPUT_DIR, TAG_PARENT_STEP,
                                 TAG_RESUMED_FROM, TAG_SESSION, TAG_STEP_KEY, TAG_STEP_NAME, TAG_SUPERSEDED_BY)
from flows.mlflow_runs import create_run_once, experiment_id_for, find_step_runs, flatten_params, open_pipeline_run
from fluxflow.output_layout import metrics_file, samples_dir
from fluxflow.storage.location import local_root

if TYPE_CHECKING:  # only for annotations: this module must import without torch
    from fluxflow.checkpoints.ref import CheckpointRef, StepResult


def file_points(path: Path) -> list[Metric]:
    """The points of a metrics JSONL file (fluxflow/train/tracking.py), `epoch` included; `log_points` keeps those
    after the run's last step of each key."""
    points = []
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for record in map(json.loads, filter(str.strip, lines)):
        stamp, step = int(datetime.fromisoformat(record["timestamp"]).timestamp() * 1000), int(record["global_step"])
        values = {**record["metrics"], "epoch": record["epoch"]}
        points += [Metric(key, float(value), stamp, step) for key, value in values.items() if value is not None]
    return points


def resume_point(result: StepResult) -> str:
    """Where the step's last run resumed it, as the console's "Resuming from checkpoint" line says it (1-based epoch,
    batches done in it): "epoch 1, batch 14"; "" when it trained from its start. (StepResult holds the 0-based epoch,
    whose tuple, "(0, 14)", read as another epoch than the console's.)"""
    if result.resumed_from is None:
        return ""
    epoch, batch = result.resumed_from
    return f"epoch {epoch + 1}, batch {batch}"


class StepRunRecorder:
    """One step's nested run: opened (or reopened), fed metric points, samples and artifacts, then closed."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str, output_dir: str, session: str,
                 experiment_name: str = "", tags: dict[str, str] | None = None,
                 params: dict[str, str] | None = None):
        self.client, self.experiment_id, self.parent_run_id = client, experiment_id, parent_run_id
        self.output_dir, self.session, self.experiment_name = output_dir, session, experiment_name
        # Tags, not params: a step resumed on another node changes them, and MLflow params cannot change.
        self.extra_tags = dict(tags or {})
        # Params beyond the step's own fields (the model's and the dataset's: mlflow_runs.step_context_params).
        self.extra_params = dict(params or {})
        self.run_id: str | None = None
        self.step = None
        self.step_key = ""
        self.last_step: dict[str, int] = {}  # per metric key, the last step the run holds

    def open(self, step, step_key: str, resumed: bool) -> None:
        newest = self._newest_run(step, step_key)
        reopen = newest is not None and (resumed or newest.info.status != "FINISHED"
                                         or (self.session and newest.data.tags.get(TAG_SESSION) == self.session))
        self._use(newest if reopen else None)
        if reopen:
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._tags().items()])
        if reopen or resumed:  # resumed with no run: killed before the tracking thread made it; the file has its points
            self.sync_from_files()

    def _use(self, run) -> None:
        """Write to `run` (one found for the step), or to a fresh run with the step's resolved config as params (None).
        Then tag the step's other runs in this output directory (trained before its config changed, or before its
        files were wiped) `fluxflow.superseded_by` this run, and untag this one (a config changed back reuses its
        older files and run): in the MLflow UI two runs of one step under one pipeline run are otherwise told apart
        only by their step key tags, with nothing saying which one the pipeline's outputs hold."""
        if run is not None:
            self.run_id = run.info.run_id
        else:
            self.run_id = create_run_once(self.client, self.experiment_id, self._tags(), self.step.name)
            self.last_step = {}
        # A kill between the run's creation and its params (sent in chunks of 100) leaves some or all missing.
        had = run.data.params if run is not None else {}
        params = {**self.extra_params, **flatten_params(self.step.model_dump(mode="json"))}
        missing = [Param(k, v) for k, v in params.items() if k not in had]
        if missing:
            self.client.log_batch(self.run_id, params=missing)
        for other in find_step_runs(self.client, self.experiment_id, self.output_dir, None, self.step.name):
            if other.info.run_id == self.run_id:
                if TAG_SUPERSEDED_BY in other.data.tags:
                    self.client.delete_tag(self.run_id, TAG_SUPERSEDED_BY)
            elif other.data.tags.get(TAG_SUPERSEDED_BY) != self.run_id:
                self.client.set_tag(other.info.run_id, TAG_SUPERSEDED_BY, self.run_id)

    def log_points(self, points: list[Metric]) -> None:
        """The points after each key's last logged step, once: one batch may hold a key twice at the same step (an
        epoch's last log interval and its evaluation both report `epoch`), so the filter moves with every point."""
        if self.run_id is None:
            return
        fresh = []
        for p in points:
            if p.step > self.last_step.get(p.key, -1):
                fresh.append(p)
                self.last_step[p.key] = p.step
        if fresh:
            self.client.log_batch(self.run_id, metrics=fresh)

    def log_image(self, path: Path) -> None:
        if self.run_id is not None:
            self.client.log_artifact(self.run_id, str(path), artifact_path="samples")

    def log_artifact(self, path: Path) -> None:
        if self.run_id is not None and Path(path).is_file():  # e.g. the metrics JSONL, absent when nothing was logged
            self.client.log_artifact(self.run_id, str(path))

    def set_tag(self, key: str, value: str) -> None:
        if self.run_id is not None:
            self.client.set_tag(self.run_id, key, value)

    def finish(self, ref: CheckpointRef, result: StepResult) -> None:
        if self.run_id is None:
            return
        stamp = int(datetime.now().timestamp() * 1000)
        self.log_points([Metric(FINAL_PREFIX + k, float(v), stamp, ref.global_step)
                         for k, v in result.final_metrics.items()])
        tags = {TAG_OUTCOME: result.outcome, TAG_EPOCHS_DONE: result.epochs_done, TAG_GLOBAL_STEP: ref.global_step,
                TAG_CHECKPOINT_URI: ref.uri, TAG_CHECKPOINT_SHA256: ref.sha256, TAG_RESUMED_FROM: resume_point(result)}
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
        self.client.log_dict(self.run_id, {"ref": ref.to_dict(), "result": result.to_dict()}, "checkpoint_ref.json")
        self.client.set_terminated(self.run_id, "FINISHED")

    def failed(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)

    def complete_skipped(self, step, ref: CheckpointRef, result: StepResult) -> None:
        """A step the runner skipped as complete: link the run that trained it, and close it FINISHED with what its
        files hold if a kill left it open (after ref.json was written), or make it from them if it was never opened
        (the step trained while the tracking server was down, and its process ended before it answered)."""
        newest = self._newest_run(step, ref.step_key)
        self._use(newest)
        if newest is not None and newest.info.status == "FINISHED":
            return
        self.sync_from_files()
        self.log_artifact(self.metrics_file())
        self.finish(ref, result)

    def sync_from_files(self) -> None:
        """Send what the step's files hold and the run lacks: the metric points after the run's last logged step
        of each key, and the samples it does not list."""
        metrics = self.client.get_run(self.run_id).data.metrics
        self.last_step = {key: max(m.step for m in self.client.get_metric_history(self.run_id, key)) for key in metrics}
        self.log_points(file_points(self.metrics_file()))
        listed = {a.path for a in self.client.list_artifacts(self.run_id, "samples")}
        samples = samples_dir(local_root(self.output_dir))  # an object store's: its staging copy
        # The step's own: the samples folder also holds those of its earlier configurations (the name's hash is the
        # first 6 characters of the step key: fluxflow/sampling/sample_files.py), which are not this run's images. Any
        # position: a step moved in the file since it trained is reused, its samples named at its old one.
        own = f"{self.step.name}_[0-9][0-9][0-9]*_{self.step_key[:6]}[-_]*"
        for image in sorted(samples.glob(own)):
            if f"samples/{image.name}" not in listed:
                self.log_image(image)

    def metrics_file(self) -> Path:
        return metrics_file(local_root(self.output_dir), self.step.name)  # an object store's: its staging copy

    def _newest_run(self, step, step_key: str):
        """The newest run of `step` (now this recorder's step), or None, once the experiment and pipeline run are
        known."""
        self.step, self.step_key = step, step_key
        # The experiment and the pipeline's run, where the flow could not tell them (MLflow down at its start): by
        # name and output directory (in the flow's process, the flow's own queued call has opened them by then).
        if not self.experiment_id:
            self.experiment_id = experiment_id_for(self.client, self.experiment_name)
        if not self.parent_run_id:  # found, as the flow opened it; created when this process is not the flow's
            self.parent_run_id = open_pipeline_run(self.client, self.experiment_id, self.output_dir, {})
        found = find_step_runs(self.client, self.experiment_id, self.output_dir, self.step_key, self.step.name)
        return found[0] if found else None

    def _tags(self) -> dict[str, str]:
        return {PARENT_RUN_ID: self.parent_run_id, TAG_KIND: "step", TAG_OUTPUT_DIR: self.output_dir,
                TAG_STEP_KEY: self.step_key, TAG_STEP_NAME: self.step.name, TAG_PARENT_STEP: self.step.parent or "",
                TAG_SESSION: self.session, **self.extra_tags}
