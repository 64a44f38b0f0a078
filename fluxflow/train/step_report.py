"""What a running step tells the world: metric means per log interval, sample images, held-out evaluation, and the
step's final metrics. It reads the `StepRun`'s position and models and writes only to the tracker and samples/."""
from __future__ import annotations

import time
from datetime import datetime

import torch

from fluxflow.config.modes import step_metrics
from fluxflow.evaluation.evaluate import evaluate_step
from fluxflow.train.gan_health import FlatDiscriminatorWatch
from fluxflow.runtime import distributed
from fluxflow.sampling.samples import write_samples
from fluxflow.output_layout import eval_cache_dir, metrics_file, samples_dir
from fluxflow.train.tracking import Progress


class StepReport:
    """Everything a step reports, to its tracker (console, JSONL, MLflow) and samples/: log-interval means (the one
    host sync per interval), sample images, held-out evaluation, the final metrics. It reads the StepRun it reports
    on (position, models, data, monitor) and never changes it; its own state (the running interval's sums, the data's
    skip counter) goes into the checkpoint through `state_dict()`, so a resumed step reports what an uninterrupted one
    would."""

    def __init__(self, run, tracker):
        self.run, self.tracker = run, tracker
        self.output = run.files.output  # the local directory (an object store's staging mirror)
        self.last_means: dict[str, float] = {}  # the last log interval's means (ReduceLROnPlateau's fallback metric)
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}  # batches that reported each metric (grad norms: only window ends)
        self._count, self._tick = 0, time.perf_counter()  # batches timed since `_tick` (by this process)
        self.flat_d = FlatDiscriminatorWatch(run.config.output.d_flat_warn_updates)

    def started(self, resumed: bool) -> None:
        self.tracker.step_started(self.run.step, self.run.files.key, self.run.files.n_steps, resumed)

    def epoch_started(self) -> None:
        if self.run.position.batch == 0:  # a resumed epoch keeps the log interval its checkpoint carried
            self._sums, self._counts = {}, {}
        self._count, self._tick = 0, time.perf_counter()

    def state_dict(self) -> dict:
        """What a resumed step needs to report the numbers an uninterrupted one does, for its checkpoint: the running
        log interval's sums (its means and its `skipped_updates` then cover the batches before the checkpoint too) and
        the training data's skip counter (`skipped_samples`). Under torchrun this is rank 0's, which every rank
        takes back. The sums go to the host here: a checkpoint save waits for the device anyway."""
        skips = getattr(self.run.data.train_set, "skips", None)
        return {"sums": {k: v.detach().cpu() for k, v in self._sums.items()}, "counts": dict(self._counts),
                "skips": skips.state_dict() if skips is not None else None}

    def load_state_dict(self, state: dict | None) -> None:
        """Take back `state_dict()`; None (a checkpoint written before these counts were saved) keeps the fresh
        counts."""
        if not state:
            return
        self._sums = {k: v.to(self.run.device) for k, v in state["sums"].items()}
        self._counts = dict(state["counts"])
        skips = getattr(self.run.data.train_set, "skips", None)
        if skips is not None and state.get("skips") is not None:
            skips.load_state_dict(state["skips"])

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        """Accumulate one batch's metrics on the device (no host sync)."""
        for k, v in metrics.items():
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
            self._counts[k] = self._counts.get(k, 0) + 1
        self._count += 1

    def log_interval(self) -> None:
        """Means of the batches since the last log: the one host sync per log interval. The epoch's last line also
        carries `skipped_samples`, the training data's count of skipped or repaired items (a CPU counter)."""
        self.last_means = mean_metrics(self._sums, self._counts)
        history = self.run.history[self.run.step.name]
        for k, v in self.last_means.items():
            history.setdefault(k, []).append(v)
        elapsed = time.perf_counter() - self._tick
        pos = self.run.position
        logged = dict(self.last_means)
        if pos.batch == self.run.data.batches_per_epoch:
            logged["skipped_samples"] = float(self.skipped_samples())
        self.tracker.log_metrics(logged, self.progress(pos.epoch + 1, pos.batch, elapsed / self._count))
        warning = self.flat_d.observe(self.last_means, self._counts.get("d_logit_real", 0))
        if warning:
            self.tracker.warn("flat_discriminator", f"Step {self.run.step.name}: {warning}")
        self._sums, self._counts, self._count, self._tick = {}, {}, 0, time.perf_counter()

    def skipped_samples(self) -> int:
        """Items of the step's training data skipped or repaired so far (fluxflow/data/skips.py)."""
        return int(getattr(self.run.data.train_set, "skipped", 0))

    def progress(self, epoch: int, batch: int, sec_per_batch: float) -> Progress:
        run = self.run
        return Progress(step_name=run.step.name, step_index=run.step.index + 1, n_steps=run.files.n_steps,
                        epoch=epoch, n_epochs=run.monitor.max_epochs, batch=batch,
                        n_batches=run.data.batches_per_epoch, global_step=run.position.global_step,
                        sec_per_batch=sec_per_batch)

    def samples(self, batch: int | None) -> None:
        """Sample images of this position; `batch` None at an epoch's end (the epoch just completed)."""
        run = self.run
        if run.config.output.no_samples or not run.main:
            return
        epoch = run.position.epoch + 1 if batch is not None else run.position.epoch
        for path in write_samples(samples_dir(self.output), step=run.step, step_number=run.step.index + 1,
                                  epoch=epoch, batch=batch, tag=run.files.key[:6],
                                  models=run.trainer.sampling_models(), holdout=run.data.holdout_images,
                                  captions=list(run.config.output.sample_captions),
                                  latent_norm=run.trainer.ctx.latent_norm, config=run.config,
                                  seed=run.step.seed, spade=run.trainer.ctx.spade):
            self.tracker.log_image(path)

    def evaluate(self) -> dict[str, float]:
        """Evaluation on the held-out split with the weights samples come from; logged at the epoch's global step."""
        run = self.run
        if not run.main:
            return {}
        found = evaluate_step(run.step, run.trainer.sampling_models(), run.data.holdout_set, run.data.train_set,
                              run.config, run.trainer.ctx.latent_norm, run.device, eval_cache_dir(self.output),
                              spade=run.trainer.ctx.spade)
        found = {f"eval_{k}": v for k, v in found.items()}
        epochs = run.position.epoch
        if found:
            self.tracker.log_metrics(found, self.progress(epochs, run.data.batches_per_epoch, float("nan")))
            run.say(f"[{datetime.now():%H:%M:%S}] Evaluation of {run.step.name} after epoch {epochs}: "
                    + ", ".join(f"{k} {v:.4g}" for k, v in sorted(found.items())))
        return found

    def final_metrics(self) -> dict[str, float]:
        """The step's last logged losses, its final evaluation, its skipped updates and samples, and its smoothed
        metric."""
        run = self.run
        history = run.history[run.step.name]
        shown = set(step_metrics(run.step))
        final = {k: values[-1] for k, values in history.items() if k in shown and values}
        final.update(self.evaluate())
        final["skipped_updates"] = float(sum(history.get("skipped_updates", [])))
        final["skipped_samples"] = float(self.skipped_samples())
        smoothed = run.monitor.smoothed()
        if smoothed is not None:
            final[f"smoothed_{run.monitor.metric}"] = smoothed
        return final

    def finished(self, ref, result) -> None:
        self.tracker.log_artifact(metrics_file(self.output, self.run.step.name))
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
