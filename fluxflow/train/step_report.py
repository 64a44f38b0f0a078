"""What a running step tells its tracker (console, JSONL, MLflow) and samples/: metric means per log interval (the one
host sync per interval), sample images, held-out evaluation, and the step's final metrics."""
from __future__ import annotations

import contextlib
import time
from datetime import datetime

import torch

from fluxflow.config.modes import step_metrics
from fluxflow.evaluation.evaluate import evaluate_step
from fluxflow.train.gan_health import FlatDiscriminatorWatch
from fluxflow.runtime import distributed
from fluxflow.sampling.samples import write_samples
from fluxflow.output_layout import eval_cache_dir, samples_dir
from fluxflow.train.tracking import Progress


class StepReport:
    """Reads the step's `position` (StepRun's, advanced by the step), `trainer`, `data` and `monitor`, and never
    changes them. What it keeps, `history` (the log-interval means of this step and its ancestors,
    `StepState.step_metrics`) and the counts of `state_dict()`, goes into the checkpoint, so a resumed step reports
    what an uninterrupted one would. `say` prints a console line (rank 0's)."""

    def __init__(self, tracker, *, config, step, files, data, monitor, position, trainer, device, say,
                 history: dict):
        self.tracker, self.config, self.step, self.files = tracker, config, step, files
        self.data, self.monitor, self.position, self.trainer, self.device, self.say = \
            data, monitor, position, trainer, device, say
        self.main = distributed.is_main()
        self.history = {**history, step.name: dict(history.get(step.name, {}))}
        self.output = files.output  # the local directory (an object store's staging mirror)
        self.last_means: dict[str, float] = {}  # the last log interval's means (ReduceLROnPlateau's fallback metric)
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}  # batches that reported each metric (grad norms: only window ends)
        self._count, self._tick = 0, time.perf_counter()  # batches timed since `_tick` (by this process)
        self.flat_d = FlatDiscriminatorWatch(config.output.d_flat_warn_updates)

    def started(self, resumed: bool) -> None:
        self.tracker.step_started(self.step, self.files.key, self.files.n_steps, resumed)

    def epoch_started(self) -> None:
        if self.position.batch == 0:  # a resumed epoch keeps the log interval its checkpoint carried
            self._sums, self._counts = {}, {}
        self._count, self._tick = 0, time.perf_counter()

    def state_dict(self) -> dict:
        """What it keeps, for the checkpoint: the running log interval's sums (its means and its `skipped_updates`
        then cover the batches before the checkpoint too), the data's skip counter and the flat-discriminator watch.
        Under torchrun rank 0's, which every rank takes back. The sums go to the host here: a checkpoint save waits
        for the device anyway."""
        skips = getattr(self.data.train_set, "skips", None)
        return {"sums": {k: v.detach().cpu() for k, v in self._sums.items()}, "counts": dict(self._counts),
                "skips": skips.state_dict() if skips is not None else None, "flat_d": self.flat_d.state_dict()}

    def load_state_dict(self, state: dict | None) -> None:
        """Take back `state_dict()`; None (a checkpoint written before these counts were saved) keeps the fresh
        counts."""
        if not state:
            return
        self._sums = {k: v.to(self.device) for k, v in state["sums"].items()}
        self._counts = dict(state["counts"])
        skips = getattr(self.data.train_set, "skips", None)
        if skips is not None and state.get("skips") is not None:
            skips.load_state_dict(state["skips"])
        if state.get("flat_d") is not None:  # written before the flat-D watch was saved: it counts from 0
            self.flat_d.load_state_dict(state["flat_d"])

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """Accumulate one batch's metrics on the device (no host sync)."""
        for k, v in metrics.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
            self._counts[k] = self._counts.get(k, 0) + 1
        self._count += 1

    def log_interval(self) -> None:
        """Means of the batches since the last log: the one host sync per log interval. The epoch's last line also
        carries `skipped_counts` (CPU counters)."""
        self.last_means = mean_metrics(self._sums, self._counts)
        history = self.history[self.step.name]
        for k, v in self.last_means.items():
            history.setdefault(k, []).append(v)
        elapsed = time.perf_counter() - self._tick
        pos = self.position
        # the lr of each group's latest update (none before the step's first)
        logged = {**self.last_means, **{f"lr_{group}": lr for group, lr in self.trainer.last_lr.items()}}
        if pos.batch == self.data.batches_per_epoch:
            logged.update(self.skipped_counts())
        self.tracker.log_metrics(logged, self.progress(pos.epoch + 1, pos.batch, elapsed / self._count))
        warning = self.flat_d.observe(self.last_means, self._counts.get("d_logit_real", 0))
        if warning:
            self.tracker.warn("flat_discriminator", f"Step {self.step.name}: {warning}")
        self._sums, self._counts, self._count, self._tick = {}, {}, 0, time.perf_counter()

    @contextlib.contextmanager
    def untimed(self):
        """Work between batches (a checkpoint, samples, an evaluation) left out of the next line's s/batch."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._tick += time.perf_counter() - start

    def skipped_counts(self) -> dict[str, float]:
        """`skipped_samples`: items of the step's training data skipped or repaired so far (fluxflow/data/skips.py);
        `skipped_holdout_samples`, where the held-out split is read from files: its items that samples and evaluation
        met unreadable or repaired so far (an unreadable one is replaced by the next readable held-out image, which
        evaluation then scores twice)."""
        counts = {"skipped_samples": float(getattr(self.data.train_set, "skipped", 0))}
        if hasattr(self.data.holdout_set, "skips"):
            counts["skipped_holdout_samples"] = float(self.data.holdout_set.skipped)
        return counts

    def progress(self, epoch: int, batch: int, sec_per_batch: float) -> Progress:
        return Progress(step_name=self.step.name, step_index=self.step.index + 1, n_steps=self.files.n_steps,
                        epoch=epoch, n_epochs=self.monitor.max_epochs, batch=batch,
                        n_batches=self.data.batches_per_epoch, global_step=self.position.global_step,
                        sec_per_batch=sec_per_batch)

    def samples(self, batch: int | None) -> None:
        """Sample images of this position; `batch` None at an epoch's end (the epoch just completed)."""
        if self.config.output.no_samples or not self.main:
            return
        step, trainer = self.step, self.trainer
        epoch = self.position.epoch + 1 if batch is not None else self.position.epoch
        for path in write_samples(samples_dir(self.output), step=step, step_number=step.index + 1,
                                  epoch=epoch, batch=batch, tag=self.files.key[:6],
                                  models=trainer.sampling_models(), holdout=self.data.holdout_images,
                                  captions=list(self.config.output.sample_captions),
                                  latent_norm=trainer.ctx.latent_norm, config=self.config,
                                  seed=step.seed, spade=trainer.ctx.spade, shift=trainer.ctx.flow_shift):
            self.tracker.log_image(path)

    def evaluate(self) -> dict[str, float]:
        """Evaluation on the held-out split with the weights samples come from; logged at the epoch's global step."""
        if not self.main:
            return {}
        trainer = self.trainer
        found = evaluate_step(self.step, trainer.sampling_models(), self.data.holdout_set, self.data.train_set,
                              self.config, trainer.ctx.latent_norm, self.device, eval_cache_dir(self.output),
                              spade=trainer.ctx.spade, shift=trainer.ctx.flow_shift)
        found = {f"eval_{k}": v for k, v in found.items()}
        epochs = self.position.epoch
        if found:
            self.tracker.log_metrics(found, self.progress(epochs, self.data.batches_per_epoch, float("nan")))
            self.say(f"[{datetime.now():%H:%M:%S}] Evaluation of {self.step.name} after epoch {epochs}: "
                     + ", ".join(f"{k} {v:.4g}" for k, v in sorted(found.items())))
        return found

    def final_metrics(self) -> dict[str, float]:
        """The step's last logged losses, its final evaluation, its skipped updates and samples, and its smoothed
        metric."""
        history = self.history[self.step.name]
        shown = set(step_metrics(self.step))
        final = {k: values[-1] for k, values in history.items() if k in shown and values}
        final.update(self.evaluate())
        final["skipped_updates"] = float(sum(history.get("skipped_updates", [])))
        final.update(self.skipped_counts())
        smoothed = self.monitor.smoothed()
        if smoothed is not None:
            final[f"smoothed_{self.monitor.metric}"] = smoothed
        return final

    def finished(self, ref, result) -> None:
        self.tracker.log_artifact(self.files.metrics)
        self.tracker.step_finished(ref, result)


def mean_metrics(sums: dict[str, torch.Tensor], counts: dict[str, int]) -> dict[str, float]:
    """Each metric's mean over the batches that reported it, averaged across torchrun ranks; `skipped_updates`
    stays a count (its sum)."""
    if not sums:
        return {}
    names = sorted(sums)
    divisors = torch.tensor([1 if n == "skipped_updates" else counts[n] for n in names], dtype=torch.float32)
    stacked = torch.stack([sums[n].float() for n in names])
    return dict(zip(names, distributed.mean_across_ranks(stacked / divisors.to(stacked.device)).tolist()))
