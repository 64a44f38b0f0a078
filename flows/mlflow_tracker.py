"""The Tracker that records one pipeline step as a nested MLflow run, without ever making training wait on MLflow.

Everything goes through an explicit `MlflowClient` and run ids, never the fluent `mlflow.start_run` API: the active
run is thread-local and branches train in parallel threads. Each call of the step runner becomes a call put
on the process's tracking queue (flows/tracking_queue.py), which a background thread sends in order, waiting out an
unreachable server: a tracking outage never stalls or fails a step. What each call does to the run (which run, no
point twice): flows/mlflow_step_run.py. A metric batch goes out as one `log_batch` with the batches queued after it,
never one call per metric (1000 single calls take 4-19 s on sqlite).
"""
from __future__ import annotations

import logging
import math
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from flows import env  # noqa: F401  (must precede mlflow)

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from flows.mlflow_names import TAG_WARNING
from flows.mlflow_step_run import StepRunRecorder
from flows.tracking_queue import TRACKING, TrackingQueue
from fluxflow.output_layout import metrics_file
from fluxflow.runtime import kill_points
from fluxflow.storage.location import local_root
from fluxflow.train.tracking import Progress, Tracker

if TYPE_CHECKING:  # only for annotations: this module must import without torch
    from fluxflow.checkpoints.ref import CheckpointRef, StepResult

log = logging.getLogger("flows.mlflow_tracker")

# How long the end of a step waits for its MLflow records without any of them going out (an unreachable server):
# then the step returns its reference anyway, and the records follow when the server answers.
STEP_FLUSH_STALL_S = 10.0


class MlflowTracker(Tracker):
    """`session` identifies one execution of the pipeline (the Prefect flow-run id): a retried step of the same
    session continues its run even when it had to restart from scratch."""

    def __init__(self, client: MlflowClient, experiment_id: str, parent_run_id: str, output_dir: str | Path,
                 session: str = "", queue: TrackingQueue | None = None, experiment_name: str = "",
                 tags: dict[str, str] | None = None, params: dict[str, str] | None = None):
        # Empty ids (MLflow was down when the flow started): the recorder finds them by `experiment_name`.
        self.recorder = StepRunRecorder(client, experiment_id, parent_run_id, str(output_dir), session,
                                        experiment_name, tags, params)
        self.queue = queue or TRACKING
        self._last = 0  # sequence number of this tracker's last queued call
        self._behind = False  # a metric batch found the queue full: the metrics file has what MLflow missed

    @property
    def run_id(self) -> str | None:  # once the tracking thread has opened (or found) it
        return self.recorder.run_id

    @property
    def experiment_id(self) -> str:
        return self.recorder.experiment_id

    def _put(self, call, points: list | None = None) -> bool:
        seq = self.queue.put(call, points)
        if seq is not None:
            self._last = seq
        return seq is not None

    # -- Tracker protocol ---------------------------------------------------------------------------------------

    def step_started(self, step, step_key: str, n_steps: int, resumed: bool) -> None:
        self._put(partial(self.recorder.open, step, step_key, resumed))

    def log_metrics(self, metrics: dict[str, float], progress: Progress) -> None:
        stamp, step = int(time.time() * 1000), int(progress.global_step)
        values = {**metrics, "epoch": progress.epoch}
        if math.isfinite(progress.sec_per_batch):  # NaN for evaluation results, which are not timed batches
            values["sec_per_batch"] = progress.sec_per_batch
        points = [Metric(key, float(value), stamp, step) for key, value in values.items() if value is not None]
        if self._behind and self.queue.room() >= len(points):
            self._put(self.recorder.sync_from_files)  # what the file holds beyond the run's last points, this batch too
            self._behind = False
        if not self._put(self.recorder.log_points, points) and not self._behind:
            self._behind = True
            log.warning("MLflow has been unreachable for long: %d metric points wait in memory; the next ones are "
                        "sent from %s when it answers", self.queue.max_points,
                        metrics_file(local_root(self.recorder.output_dir), progress.step_name))

    def log_image(self, path: Path) -> None:
        self._put(partial(self.recorder.log_image, Path(path)))

    def log_artifact(self, path: Path) -> None:
        self._put(partial(self.recorder.log_artifact, Path(path)))

    def step_finished(self, ref: CheckpointRef, result: StepResult) -> None:
        kill_points.reached("step_finished")  # test-only: ref.json is written, the run not closed
        self._put(partial(self.recorder.finish, ref, result))

    def warn(self, key: str, message: str) -> None:
        self._put(partial(self.recorder.set_tag, TAG_WARNING + key, message))

    # -- beyond the protocol: called by the task around run_step -------------------------------------------------

    def step_failed(self, status: str = "FAILED") -> None:
        """End the step's run as FAILED, or KILLED when it was interrupted (the next run continues it)."""
        self._put(partial(self.recorder.failed, status))

    def step_skipped(self, step, ref: CheckpointRef, result: StepResult) -> None:
        """A step the runner skipped as complete reports nothing: StepRunRecorder.complete_skipped."""
        self._put(partial(self.recorder.complete_skipped, step, ref, result))

    def record_from_files(self, step, step_key: str, ref: CheckpointRef, result: StepResult,
                          tags: dict[str, str] | None = None) -> None:
        """Record a step that ran where no tracker could reach it (torchrun ranks in a child process) from the files
        rank 0 wrote: the metrics JSONL, this step's samples, and the result. Same run rules as live tracking.
        `tags`: more tags of the run, known only once the ranks are done (where Ray Train placed them)."""
        self.recorder.extra_tags.update(tags or {})
        self.step_started(step, step_key, 0, resumed=result.resumed_from is not None)
        self._put(self.recorder.sync_from_files)  # what a reopened run already got is not sent twice
        self.log_artifact(metrics_file(local_root(self.recorder.output_dir), step.name))
        self.step_finished(ref, result)

    def flush(self) -> bool:
        """Wait until this tracker's calls are sent, or until none has gone out for STEP_FLUSH_STALL_S (the server is
        unreachable: they stay queued). Returns whether all are sent. During a known outage it does not wait: nothing
        goes out until the server answers, and the end of the run waits for the records (flows/pipeline_flow.py)."""
        return self.queue.wait(self._last, 0.0 if self.queue.unreachable_since is not None else STEP_FLUSH_STALL_S)
