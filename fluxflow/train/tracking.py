"""How a running step reports: the Tracker protocol, and the core's console + JSONL implementation.

The runner calls a Tracker; it never knows who listens. `ConsoleJsonlTracker` prints the original tool's console line
and appends the original tool's JSONL metrics file; the Prefect/MLflow layer (flows/) supplies its own Tracker and
combines the two with `MultiTracker`. No torch, no prefect, no mlflow here.
"""
from __future__ import annotations

import json
import math
import sys
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Iterable, Protocol, runtime_checkable

from tqdm import tqdm

from fluxflow.checkpoints.atomic_file import atomic_write
# tests/test_golden_losses.py (which must stay as it is) also imports metrics_file from this module.
from fluxflow.output_layout import metrics_file

if TYPE_CHECKING:
    from fluxflow.checkpoints.ref import CheckpointRef, StepResult

# Console labels in the original tool's order; metrics not listed here still go to the JSONL file and other trackers.
CONSOLE_LABELS: dict[str, str] = {
    "vae_loss": "VAE",
    "kl_loss": "KL",
    "g_loss": "G",
    "d_loss": "D",
    "lpips_loss": "LPIPS",
    "flow_loss": "Flow",
}
# The counts a console line ends with where they are not 0: non-finite updates not applied (training may be standing
# still), and at an epoch's end the data's skipped or repaired items (fluxflow/data/skips.py) and the held-out images
# that could not be read.
SKIP_LABELS = {"skipped_updates": "skipped updates", "skipped_samples": "skipped samples",
               "skipped_holdout_samples": "skipped held-out samples"}


@dataclass(frozen=True)
class Progress:
    """Where a step is, as the console shows it: step_index, epoch and batch are 1-based."""

    step_name: str
    step_index: int  # the step's place in the pipeline (ResolvedStep.index + 1) out of n_steps
    n_steps: int
    epoch: int  # within the step, out of n_epochs (max_epochs for loss_threshold steps)
    n_epochs: int
    batch: int  # batches done in this epoch, out of n_batches
    n_batches: int
    global_step: int  # batches since the pipeline began (not optimizer updates: fewer with gradient accumulation)
    sec_per_batch: float  # mean over the log interval


@runtime_checkable
class Tracker(Protocol):
    def step_started(self, step: Any, step_key: str, n_steps: int, resumed: bool) -> None: ...

    def log_metrics(self, metrics: dict[str, float], progress: Progress) -> None: ...

    def log_image(self, path: Path) -> None: ...

    def log_artifact(self, path: Path) -> None: ...

    def step_finished(self, ref: CheckpointRef, result: StepResult) -> None: ...

    def warn(self, key: str, message: str) -> None:
        """A training-health warning (e.g. a flat discriminator): a console line, an MLflow run tag
        `fluxflow.warning.<key>`."""

    def say(self, line: str) -> None:
        """One of the runner's own lines ("Starting step ...", "Finished step ..."), which it prints itself
        (`runner_line`): for trackers that show the run's lines elsewhere (the Prefect UI)."""


def has_console_line(metrics: dict[str, float]) -> bool:
    """Whether `metrics` get a console line: a training log interval's do; evaluation results (eval_*) do not (the
    runner prints them on a line of its own)."""
    return any(key in metrics for key in CONSOLE_LABELS)


def console_line(metrics: dict[str, float], progress: Progress, now: datetime | None = None) -> str:
    """The original tool's console line, showing exactly those of `metrics` that have a console label, in the original
    tool's order: `[HH:MM:SS] Step vae_gan (2/4) | Epoch 5/20 | Batch 127/500 | VAE: 0.0234 | KL: 12.45 | ... |
    3.2s/batch`, then the counts of SKIP_LABELS that are not 0 (` | skipped updates: N`, ...)."""
    now = now or datetime.now()
    parts = [
        f"[{now:%H:%M:%S}] Step {progress.step_name} ({progress.step_index}/{progress.n_steps})",
        f"Epoch {progress.epoch}/{progress.n_epochs}",
        f"Batch {progress.batch}/{progress.n_batches}",
    ]
    shown = [(label, float(metrics[key])) for key, label in CONSOLE_LABELS.items() if key in metrics]
    # 4 significant digits (0.0234, 12.45); 0.0 for zero, as the original tool shows GAN-only mode's VAE loss
    parts += [f"{label}: {'0.0' if value == 0 else f'{value:.4g}'}" for label, value in shown]
    seconds = progress.sec_per_batch
    parts.append(f"{seconds:.1f}s/batch" if seconds >= 1 else f"{seconds:.2g}s/batch")  # 3.2s/batch, 0.041s/batch
    parts += [f"{label}: {int(metrics[key])}" for key, label in SKIP_LABELS.items() if metrics.get(key)]
    return " | ".join(parts)


def jsonl_record(metrics: dict[str, float], progress: Progress, session_id: str, now: datetime | None = None) -> dict:
    """One line of the original tool's training_metrics_<step>.jsonl; non-finite values are null (strict JSON).
    Its metrics come in the original tool's order, the console's losses first: the step's means arrive sorted by
    name, which put d_loss before kl_loss and vae_loss last in every line."""
    order = [key for key in CONSOLE_LABELS if key in metrics] + [key for key in metrics if key not in CONSOLE_LABELS]
    values = {key: v if math.isfinite(v := float(metrics[key])) else None for key in order}
    return {
        "timestamp": (now or datetime.now()).isoformat(),
        "session_id": session_id,
        "epoch": progress.epoch,
        "batch": progress.batch,
        "global_step": progress.global_step,
        "metrics": values,
    }


def trim_jsonl(path: Path, max_global_step: int, keep_evaluation_at_end: bool = True) -> None:
    """Drop lines logged after `max_global_step` (a run killed after its last checkpoint logged them; the resumed
    run logs those batches again). With `keep_evaluation_at_end=False` the evaluation lines at `max_global_step` go
    too: a step resumed from its last epoch's checkpoint evaluates its final weights again. Rewritten atomically; a
    missing file is fine; so is a line a kill (or a full disk) cut short in the middle of an append: it goes too."""
    if not path.exists():
        return

    def kept(line: str) -> bool:
        try:
            record = json.loads(line)
        except ValueError:  # cut short: dropped, as the lines past the checkpoint (those batches are logged again)
            return False
        if not isinstance(record, dict):
            return False
        step, metrics = record.get("global_step", 0), record.get("metrics") or {}
        evaluation = bool(metrics) and all(key.startswith("eval_") for key in metrics)
        return step < max_global_step or (step == max_global_step and (keep_evaluation_at_end or not evaluation))

    lines = [line for line in path.read_text().splitlines() if line.strip() and kept(line)]
    atomic_write(path, lambda f: f.write("".join(line + "\n" for line in lines).encode()), durable=False)


class ConsoleJsonlTracker(Tracker):
    """Prints the original tool's console line and appends `<output>/graph/training_metrics_<step>.jsonl`.

    The JSONL file is opened in append mode for every line and closed again: a resumed step continues its file,
    each line is on disk as soon as it is logged, and several steps (branches) can share one tracker. Its other calls
    are the protocol's no-ops (inherited): the runner prints its own lines ("Starting step", "Finished step", ...)
    itself, and images and artifacts are already files under the output directory.
    """

    def __init__(self, output_dir: str | Path, session_id: str | None = None, stream: IO[str] | None = None):
        self.output_dir = Path(output_dir)
        self.session_id = session_id or datetime.now().strftime("%Y%m%d_%H%M%S")
        self._stream = stream
        self._lock = threading.Lock()  # one line at a time when branches log from threads

    def log_metrics(self, metrics: dict[str, float], progress: Progress) -> None:
        now = datetime.now()
        record = json.dumps(jsonl_record(metrics, progress, self.session_id, now))
        path = metrics_file(self.output_dir, progress.step_name)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(record + "\n")
            if has_console_line(metrics):
                console_print(console_line(metrics, progress, now), self._stream)

    def warn(self, key: str, message: str) -> None:
        console_print(f"⚠️  {message}", self._stream)


def _to_each(name: str):
    """The Tracker method `name` of a MultiTracker: the same call on each of its trackers, in turn."""
    def call(self, *args, **kwargs) -> None:
        for t in self.trackers:
            getattr(t, name)(*args, **kwargs)
    call.__name__ = call.__qualname__ = name
    return call


class MultiTracker:
    """Sends every call to each tracker in turn (e.g. console + JSONL and MLflow)."""

    def __init__(self, trackers: Iterable[Tracker]):
        self.trackers = list(trackers)

    step_started, log_metrics, log_image, log_artifact, step_finished, warn = map(
        _to_each, ("step_started", "log_metrics", "log_image", "log_artifact", "step_finished", "warn"))

    def say(self, line: str) -> None:
        for tracker in self.trackers:
            runner_line(tracker, line, printed=True)


# One console line at a time in this process: branches and replicates train in threads, and a line is written in
# two writes (its text, then its newline), between which another thread's line got in ("...final.pt[11:27:03]
# Finished step a-seed0: ...", then an empty line).
CONSOLE_LOCK = threading.Lock()


def console_print(line: str, stream: IO[str] | None = None) -> None:
    """`line` on `stream` (default: sys.stdout at the time), whole, and flushed."""
    stream = stream or sys.stdout
    with CONSOLE_LOCK:
        tqdm.write(line, file=stream)  # clears and redraws a progress bar on a terminal instead of breaking it
        stream.flush()


def runner_line(tracker, line: str, printed: bool = False) -> None:
    """One of the runner's own lines: printed (unless `printed`), and handed to `tracker.say` for the trackers that
    show a run's lines elsewhere (the Prefect UI). A tracker without `say` (one written against the protocol before
    it had it) is left out, not failed."""
    if not printed:
        console_print(line)
    told = getattr(tracker, "say", None)
    if told is not None:
        told(line)
