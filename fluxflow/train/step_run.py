"""Run one pipeline step from its input checkpoint to its transition: the training loop, top to bottom.

`run_step` is what a Prefect task calls (flows/) and what `run_pipeline` (fluxflow/train/pipeline.py) calls without
any orchestrator. It returns a `StepOutcome(ref, result)`; nothing else crosses between steps.

Files per step (fluxflow/checkpoints/step_files.py): `latest.pt` every `checkpoint_save_interval` batches and at
each epoch end, then the immutable `final.pt` and `ref.json` (the returned reference) once at the end.

Words: a pipeline *step* is one stage of the YAML; a *batch* is one pass of `Trainer.train_batch`; `global_step`
counts batches over the whole pipeline.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
from dataclasses import dataclass
from datetime import datetime

import torch
import torch.distributed as dist

from fluxflow.checkpoints.io import load_checkpoint
from fluxflow.checkpoints.latest import load_latest, save_latest
from fluxflow.checkpoints.rng_state import capture_rng_state, restore_rng_state
from fluxflow.checkpoints.lock import RunLock
from fluxflow.checkpoints.ref import CheckpointRef, StepOutcome, StepResult
from fluxflow.checkpoints.step_files import StepFiles, plan_step
from fluxflow.checkpoints.step_state import StepState, saved_latent_norm_remeasure
from fluxflow.config.modes import has_flow_mode, has_vae_mode
from fluxflow.config.schema import ModelConfig
from fluxflow.data import make_loader
from fluxflow.errors import CheckpointError, DataError
from fluxflow.runtime import distributed, kill_points
from fluxflow.runtime.device import resolve_device
from fluxflow.runtime.gpu_claim import claimed_device
from fluxflow.storage.location import output_root
from fluxflow.runtime.stop_request import StepInterrupted, stop_requested
from fluxflow.models.latents import LATENT_NORM_IMAGES, latent_norm_of_means
from fluxflow.train.step_cache import attach_caches
from fluxflow.train.step_data import (CutCaptions, captioned_batches, counting_cut_captions, leading_inputs,
                                     load_step_data)
from fluxflow.train.step_report import StepReport
from fluxflow.progress_bar import batch_progress
from fluxflow.train.tracking import ConsoleJsonlTracker, MultiTracker, runner_line, trim_jsonl
from fluxflow.train.batch_step import Window
from fluxflow.train.trainer import build_trainer
from fluxflow.train.transition import TransitionMonitor
from fluxflow.wording import counted

log = logging.getLogger("fluxflow.train.step_run")


def run_step(config, step_name: str, parent: CheckpointRef | None = None, tracker=None) -> StepOutcome:
    """Train step `step_name` of `config` from `parent` (the previous step's checkpoint; None for a root step, which
    starts from `model_checkpoint` or fresh weights) to its transition, and return its `StepOutcome`. `config` is
    the run's resolved config (fluxflow/config/run_config.py): its device is `training.device`.

    What a reader must know: it is idempotent per step key: a step whose final.pt and ref.json exist returns at once
    (`trained` False); one with a `latest.pt` of its key resumes from it exactly (one saved on other data, a folder
    that lists other images since, is set aside and the step starts again); files of another key are set aside
    first. It holds the step directory's lock while it runs. Under torchrun (started by fluxflow/runtime/launch.py)
    every rank calls it and rank 0 alone writes and reports; otherwise it claims a GPU of the host
    (fluxflow/runtime/gpu_claim.py) for the step, except on the Ray executor, where Ray gave the step its GPUs
    (CUDA_VISIBLE_DEVICES holds them). A stop request ends it with `StepInterrupted` after saving.
    """
    files = plan_step(config, step_name, parent)
    device_ = resolve_device(config.training.device)
    distributed.init_from_env(device_)  # a no-op unless started by torchrun
    main = distributed.is_main()
    # Rank 0 alone reports: the others get a tracker of no trackers.
    tracker = (tracker or ConsoleJsonlTracker(output_root(config))) if main else MultiTracker([])
    files.dir.mkdir(parents=True, exist_ok=True)
    with RunLock(files.dir) if main else contextlib.nullcontext():
        if main:  # an output on an object store: the step's files from it (fluxflow/storage/mirror.py)
            files.pull()
        done = files.completed()
        if done is not None:
            if main:
                runner_line(tracker, f"Skipping step {step_name}: already complete ({files.final_uri()})")
            done.result.trained = False
            return done
        if stop_requested():  # a step the interrupted run had queued: nothing loaded, nothing written
            raise StepInterrupted(f"step {step_name} not started: the run was interrupted")
        if main:
            files.set_aside_stale(lambda line: runner_line(tracker, line))
        if distributed.active():
            dist.barrier()
            return StepRun(config, files, parent, tracker, distributed.local_device(device_)).train()
        claim_gpu = config.training.executor.kind == "local"
        n_gpus = torch.cuda.device_count() if device_.type == "cuda" and claim_gpu else 0
        with claimed_device(device_, n_gpus) as device_:
            if device_.index is not None:  # implicit "cuda" allocations of this thread go to the claimed GPU too
                torch.cuda.set_device(device_)
            return StepRun(config, files, parent, tracker, device_).train()


def counts_beyond_the_step(step, batches: int, epochs: int) -> list[str]:
    """What the step's counts cannot reach in its `epochs` epochs of `batches` batches (an lr schedule's are said by
    fluxflow/train/lr_schedule.py inert_reason): the config is valid, but the value silently means something else."""
    lines, k = [], step.gradient_accumulation_steps
    if k > batches:
        n_batches = counted(batches, 'batch', 'batches')
        lines.append(f"gradient_accumulation_steps {k} is more than the epoch's {n_batches}: each update averages "
                     f"{n_batches}, not {k} (every epoch ends with an update)")
    updates = -(-batches // k) * epochs
    if has_vae_mode(step) and step.kl_warmup_steps > updates:
        lines.append(f"kl_warmup_steps {step.kl_warmup_steps} is more than the step's "
                     f"{counted(updates, 'optimizer update')}: the KL weight ends at {updates}/{step.kl_warmup_steps} "
                     "of kl_beta")
    if step.eval_interval and step.eval_interval > epochs:
        lines.append(f"eval_interval {step.eval_interval} is more than the step's {counted(epochs, 'epoch')}: it is "
                     "evaluated at its end only")
    return lines


def start_state(config, parent: CheckpointRef | None) -> dict | None:
    """The state a step starts from without its own latest.pt: its parent's final.pt, a root step's
    model_checkpoint, or None (fresh weights)."""
    if parent is not None:
        return load_checkpoint(parent.uri, expected_sha256=parent.sha256)
    if config.model_checkpoint:
        state = load_checkpoint(config.model_checkpoint)
        if differences := model_differences(state, config):
            # Loading went on to a state_dict "size mismatch" of some 5,000 characters, a retry and exit 1.
            raise CheckpointError(f"model_checkpoint {config.model_checkpoint} holds a model of other sizes than "
                                  f"this config's: {'; '.join(differences)}; set the config's to the checkpoint's, or "
                                  "start from another checkpoint")
        return state
    return None


def model_differences(state: dict, config) -> list[str]:
    """'model.vae_dim: 8 in the checkpoint, 16 in the config' for each size the checkpoint records otherwise than
    `config`, data.channels included (a checkpoint that records none has none). A pretrained text encoder's directory
    may move: its type counts, not its path."""
    if not isinstance(state.get("model_config"), dict):
        return []
    recorded, differences = ModelConfig.model_validate(state["model_config"]), []
    for field in ModelConfig.model_fields:
        saved, given = getattr(recorded, field), getattr(config.model, field)
        if field == "text_encoder":
            field, saved, given = "text_encoder.type", saved.type, given.type
        if saved != given:
            differences.append(f"model.{field}: {saved} in the checkpoint, {given} in the config")
    channels = (state.get("data") or {}).get("channels")
    if channels is not None and channels != config.data.channels:
        differences.append(f"data.channels: {channels} in the checkpoint, {config.data.channels} in the config")
    return differences


@dataclass
class Position:
    """Where a step is."""
    start_epoch: int  # the pipeline epoch at which this step began
    epoch: int = 0  # the step's completed epochs (the running epoch's 0-based index)
    batch: int = 0  # completed batches of the running epoch
    global_step: int = 0  # batches of the whole pipeline


class StepRun:
    """One pipeline step's training, set up once (input state, data, `Trainer`, a resumed position):
    `StepRun(...).train()` runs it to its transition."""

    def __init__(self, config, files: StepFiles, parent: CheckpointRef | None, tracker, device: torch.device):
        self.config, self.files, self.step, self.device = config, files, files.step, device
        self.main, self.world, self.tracker = distributed.is_main(), distributed.world_size(), tracker
        # Its own latest.pt (latest.prev.pt where that is torn; where neither can be read they are set aside, saying
        # so, and the step starts from its input: fluxflow/checkpoints/latest.py).
        state = load_latest(files.latest, say=self.say, set_aside=self.main)
        self.resuming = state is not None
        if not self.resuming:
            state = start_state(config, parent)
        meta = StepState.of_checkpoint(state)
        self.data = load_step_data(config, self.step, device)
        # A resume replays the running epoch's shuffle: of other items (images added to a folder since, shards
        # regenerated), part of the epoch would be trained twice and part not at all, and the held-out split would
        # move. So the step starts again, as on a replaced input. A latest.pt that holds the last epoch is the
        # finished step: kept, as a final.pt is (a folder's or shards' contents are not in the key).
        changed = self.resuming and not meta.completed and files.data_changed(meta.data_identity, self.data.identity)
        if self.world > 1:  # each rank looks at its own copy of the data (a node's copy of the shards has other
            changed = distributed.broadcast_object(changed)  # mtimes): rank 0 decides for all, or they fall apart
        if changed:
            if self.main:
                files.set_aside_latest(changed, self.say)
            state, self.resuming = start_state(config, parent), False
            meta = StepState.of_checkpoint(state)
        self.loader = None  # the training DataLoader, kept across epochs (its workers persist)
        if self.world > 1 and self.step.batch_size % self.world:
            raise ValueError(f"step {self.step.name}: batch_size {self.step.batch_size} is not divisible by "
                             f"its {self.world} processes (training.distributed: nodes × nproc_per_node)")
        self.monitor = TransitionMonitor(self.step.transition_on, self.step.n_epochs, device)
        # The pipeline epoch this step began at: its own latest.pt records it, a parent's checkpoint ends at it.
        start_epoch = meta.step_start_epoch if self.resuming else int((state or {}).get("epoch", 0))
        # The Trainer, then its caches (fluxflow/train/step_cache.py: the latent cache holds the rows of the pipeline
        # epochs the step may train), then the latent normalisation (measured through that cache).
        epochs = range(start_epoch, start_epoch + self.monitor.max_epochs)
        self.trainer = build_trainer(config, self.step, state, device, max_epochs=len(epochs),
                                     updates_per_epoch=self.updates_per_epoch(), resuming=self.resuming)
        if self.main and not self.resuming:
            for line in counts_beyond_the_step(self.step, self.data.batches_per_epoch, len(epochs)):
                log.warning("Step %s: %s", self.step.name, line)
        # Captions longer than the text encoder reads are cut: said once. A dataset that can say its captions (a
        # folder's are in memory, shapes' are drawn without images) is counted now; a stream's first epoch is counted
        # as it is read (run_epoch), on rank 0 only (its shards).
        self.counts_captions = None  # the text encoder, while a stream's captions are still to be counted
        encoder = self.trainer.models.get("text_encoder")
        if self.main and has_flow_mode(self.step) and encoder is not None:
            if hasattr(self.data.train_set, "caption"):
                self.warn_cut(CutCaptions().count(self.data.captions, encoder), "distinct")
            else:
                self.counts_captions = encoder
        attach_caches(config, self.step, self.data, self.trainer, epochs, self.say)
        self.trainer.set_latent_norm(self._latent_norm(state))
        self.position = Position(start_epoch=start_epoch, global_step=int((state or {}).get("global_step", 0)))
        # A step killed after its last epoch was saved (before final.pt) has nothing left to train.
        self.outcome: str | None = meta.outcome if self.resuming and meta.completed else None
        # A run killed during an epoch end's samples or evaluation (its latest.pt was saved first): `train` makes them.
        self.epoch_end_due = self.resuming and meta.epoch_end_due
        # One killed after a mid-epoch checkpoint, before (or while) that batch's samples were made: `train` makes them.
        self.batch_samples_due = self.resuming and meta.batch_samples_due
        self.resumed_from = self._resume(state, meta) if self.resuming else None
        if self.main:  # lines a killed run logged after the position this one starts from will be logged again; so
            # will the evaluation at that position of a completed step (`finish`) or of an epoch end that is due
            trim_jsonl(files.metrics, self.position.global_step,
                       keep_evaluation_at_end=not (self.resuming and (meta.completed or meta.epoch_end_due)))
        self.report = StepReport(tracker, config=config, step=self.step, files=files, data=self.data,
                                 monitor=self.monitor, position=self.position, trainer=self.trainer, device=device,
                                 say=self.say, history=meta.step_metrics)
        if self.resuming:  # the counts it reports continue: skipped samples, skipped updates, the log interval
            self.report.load_state_dict(meta.report)
        if self.outcome is not None:  # "Starting step: NAME, epoch 2, batch 0" of a 1-epoch step would say otherwise
            self.say(f"Finishing step {self.step.name}: its latest.pt holds its last epoch, nothing is trained again")
        else:
            self.say(f"Starting step: {self.step.name}, epoch {self.position.epoch + 1}, batch {self.position.batch}")

    def _latent_norm(self, state: dict | None) -> dict[str, torch.Tensor] | None:
        """The input checkpoint's latent normalisation; a flow step without one measures it with the encoder it trains
        on (from the latent cache, which holds that encoder's posterior means, where the step has one). A step that
        trains the compressor drops the one it inherits: it was measured on a compressor this step changes, so the
        next flow step measures again (flow -> VAE -> flow). A step that trains the compressor and the flow together
        measures one at its start and trains with it (its checkpoint samples with it), but its compressor ends
        elsewhere: its checkpoint marks it (`latent_norm_remeasure`, carried by steps that carry the normalisation)
        and the next flow step measures again on the compressor as it is then (VAE + flow -> flow)."""
        step, trainer = self.step, self.trainer
        latent_norm = (state or {}).get("latent_norm")
        trains_compressor = "compressor" in trainer.ctx.trained
        inherited_stale = saved_latent_norm_remeasure(state)
        if not self.resuming and (trains_compressor or (has_flow_mode(step) and inherited_stale)):
            latent_norm = None
        measured = has_flow_mode(step) and latent_norm is None
        if measured:
            inputs = leading_inputs(self.data, step.batch_size, step.seed, LATENT_NORM_IMAGES, self.device)
            latent_norm = latent_norm_of_means(trainer.posterior_means(batch) for batch in inputs)
            if self.world > 1:  # ranks reading their own webdataset shards measured different images
                latent_norm = distributed.broadcast_object({k: v.cpu() for k, v in latent_norm.items()})  # rank 0's
        self.latent_norm_remeasure = trains_compressor or (inherited_stale and not measured)
        return latent_norm

    def warn_cut(self, counted: CutCaptions, which: str) -> None:
        if line := counted.line(self.step, self.trainer.models["text_encoder"], which):
            log.warning("Step %s: %s", self.step.name, line)

    def say(self, line: str) -> None:
        if self.main:  # rank 0 speaks for all ranks
            runner_line(self.tracker, line)

    def _resume(self, state: dict, meta: StepState) -> tuple[int, int]:
        """Put back what latest.pt saved beyond the weights: position, optimizers, schedulers, the lr of the latest
        update, monitor, RNG."""
        pos = self.position
        pos.epoch, pos.batch = meta.current_step_epoch, meta.batch
        for group, opt in self.trainer.optimizers.items():
            opt.load_state_dict(state["optimizers"][group])
        for group, sched in self.trainer.schedulers.items():
            sched.load_state_dict(state["schedulers"][group])
        self.trainer.last_lr = dict(meta.last_lr)
        self.monitor.load_state_dict(meta.monitor)
        restore_rng_state(meta.rng)
        # Where it resumes, as (0-based epoch, batches done in it). At the step's end that is its last epoch, all
        # batches done: "epoch=2, batch=0" of a 1-epoch step named an epoch it does not have (console, MLflow tag).
        epoch, batch = pos.epoch, pos.batch
        if batch == 0 and epoch >= self.monitor.max_epochs:
            epoch, batch = epoch - 1, self.data.batches_per_epoch
        # Counted from 1, as the plan's "Step N:" and the progress line's "(N/M)" count steps, and epochs here
        self.say(f"Resuming from checkpoint: step={self.step.index + 1} ({self.step.name}), epoch={epoch + 1}, "
                 f"batch={batch}")
        return epoch, batch

    def train(self) -> StepOutcome:
        self.report.started(self.resuming)
        if self.epoch_end_due:
            self.epoch_end_outputs()
        elif self.batch_samples_due:
            self.batch_samples()
        while self.outcome is None:
            self.run_epoch()
        return self.finish()

    def run_epoch(self) -> None:
        """Train the rest of the running epoch from `position.batch`, then decide the transition."""
        pos, step, n_batches = self.position, self.step, self.data.batches_per_epoch
        # Under torchrun each rank loads only its slice of every global batch. Pinned only for a CUDA step: a CPU
        # step on a GPU host would start CUDA (a context on GPU 0) to pin batches it never copies.
        loader = self.loader = make_loader(self.data.batch_source, step.batch_size, step.workers,
                                           step.seed, pos.start_epoch + pos.epoch, pos.batch,
                                           pin_memory=self.device.type == "cuda", rank=distributed.rank(),
                                           world=self.world, reuse=self.loader)
        self.report.epoch_started()
        with batch_progress(n_batches, pos.batch, f"{step.name} epoch {pos.epoch + 1}") as bar:
            # islice: a step capped by max_steps stops before loading the batch after its last (a latent cache holds
            # only the rows the step reads); `inputs` are images, or their cached posterior means.
            batches = itertools.islice(loader, max(0, n_batches - pos.batch))
            if has_flow_mode(step) and pos.epoch == 0 and pos.batch == 0:  # the step's start (a resume passed it)
                batches = captioned_batches(batches, step)
            if self.counts_captions is not None:  # a stream's first epoch here: its captions counted once
                batches = counting_cut_captions(batches, self.counts_captions,
                                                lambda counted: self.warn_cut(counted, "first epoch's"))
                self.counts_captions = None
            for inputs, captions in batches:
                metrics = self.trainer.train_batch(inputs.to(self.device, non_blocking=True), captions,
                                                   pos.global_step, self.updates_done(), self.window())
                self.monitor.observe(metrics)
                pos.batch, pos.global_step = pos.batch + 1, pos.global_step + 1
                bar.update(1)
                self.after_batch(metrics)
        if pos.batch == 0 and n_batches > 0:
            # A stream of which no sample decodes (webdataset: each unreadable one is replaced by a readable one, and
            # there was none) gave no batch: the step "finished" untrained, exit 0, and later steps started from it.
            raise DataError(f"step {step.name}: no sample of dataset {step.dataset!r} could be read in epoch "
                            f"{pos.epoch + 1}, so nothing was trained (the warnings above name the first unreadable "
                            "one)")
        self.end_epoch()

    def window(self) -> Window:
        """The accumulation window of the next batch: windows of `gradient_accumulation_steps` batches from the
        epoch's start; the epoch's last window may be shorter, so every epoch ends with an update."""
        k, n = self.step.gradient_accumulation_steps, self.data.batches_per_epoch
        start = self.position.batch // k * k
        size = min(k, n - start)
        return Window(scale=1.0 / size, last=self.position.batch + 1 == start + size)

    def updates_per_epoch(self) -> int:
        """Optimizer updates per epoch: one per accumulation window, the last one possibly short."""
        return -(-self.data.batches_per_epoch // self.step.gradient_accumulation_steps)

    def updates_done(self) -> int:
        """Optimizer updates this step has made: the windows of its completed epochs and of the running one."""
        in_this_epoch = self.position.batch // self.step.gradient_accumulation_steps
        return self.position.epoch * self.updates_per_epoch() + in_this_epoch

    def after_batch(self, metrics: dict[str, torch.Tensor]) -> None:
        """Log, checkpoint and honour a stop request at the intervals the config sets.

        Checkpoints and stops happen only between accumulation windows, where no gradient is pending, so a resume is
        exact: the first window end at or after each multiple of `checkpoint_save_interval` saves, then makes that
        batch's samples. The save is marked `batch_samples_due`, so a kill before the samples are made has the resume
        make them (as `end_epoch`'s mark does for an epoch's end).
        """
        pos, n_batches = self.position, self.data.batches_per_epoch
        k, interval = self.step.gradient_accumulation_steps, self.config.output.checkpoint_save_interval
        kill_points.reached(f"batch{pos.global_step}_rank{distributed.rank()}")  # test-only: a rank dies here
        self.report.add(metrics)
        if pos.batch % self.config.output.log_interval == 0 or pos.batch == n_batches:
            self.report.log_interval()
        if pos.batch < n_batches and pos.batch % k == 0:  # the epoch's end saves and checks for a stop itself
            if pos.batch // interval != (pos.batch - k) // interval:
                with self.report.untimed():
                    self.save(batch_samples_due=True)
                    self.batch_samples()
            if stop_requested():
                self.interrupted()

    def end_epoch(self) -> None:
        """The epoch's end. latest.pt is saved first, as the next epoch's start: marked completed when the step is
        done, so a kill before final.pt finishes without training again (the final evaluation runs in `finish`), and
        marked `epoch_end_due`, so a kill before the epoch end's samples and evaluation are made has the resume make
        them (the next save clears the mark: no second save per epoch)."""
        pos = self.position
        smoothed = self.monitor.smoothed()
        metric = smoothed if smoothed is not None else self.report.last_means.get(self.monitor.metric or "")
        for schedule in self.trainer.schedulers.values():
            schedule.after_epoch(metric)
        pos.epoch, pos.batch = pos.epoch + 1, 0
        self.outcome = self.monitor.outcome_after_epoch(pos.epoch, smoothed)
        # untimed too: the next epoch's start restarts the clock
        self.save(completed=self.outcome is not None, epoch_end_due=True)
        self.epoch_end_outputs()

    def epoch_end_outputs(self) -> None:
        """The samples and evaluation of the epoch just completed, whose latest.pt is saved. A stop request comes
        first: it leaves them to the resume, as that latest.pt says."""
        pos = self.position
        if self.outcome is None and stop_requested():
            self.interrupted(saved=True)
        self.report.samples(batch=None)
        if self.outcome is None and self.step.eval_interval and pos.epoch % self.step.eval_interval == 0:
            self.report.evaluate()

    def batch_samples(self) -> None:
        """The samples of the batch just completed mid-epoch, whose latest.pt is saved. A stop request comes first: it
        leaves them to the resume, as that latest.pt says."""
        if stop_requested():
            self.interrupted(saved=True)
        self.report.samples(batch=self.position.batch)

    def interrupted(self, saved: bool = False) -> None:
        """Stop here on request (fluxflow/runtime/stop_request.py): save this position, so the next run resumes
        at it."""
        pos = self.position
        if not saved:
            self.save()
        self.say(f"[{datetime.now():%H:%M:%S}] Interrupted step {self.step.name} at epoch {pos.epoch + 1}, batch "
                 f"{pos.batch}: saved {self.files.latest}")
        raise StepInterrupted(f"step {self.step.name} interrupted at epoch {pos.epoch + 1}, batch {pos.batch}")

    def save(self, completed: bool = False, epoch_end_due: bool = False, batch_samples_due: bool = False) -> None:
        if self.main:  # only rank 0 writes checkpoints (all ranks hold the same weights)
            save_latest(self.checkpoint_state(completed, epoch_end_due, batch_samples_due), self.files.latest)
            self.files.publish_latest(self.say)  # an output on an object store: uploaded, the previous one kept

    def checkpoint_state(self, completed: bool = False, epoch_end_due: bool = False,
                         batch_samples_due: bool = False) -> dict:
        """latest.pt at this position: the original tool's checkpoint layout, plus what an exact resume needs, and
        enough for fluxflow-generate on its own (the model sizes travel with the weights)."""
        t, pos, step = self.trainer, self.position, self.step
        latent_norm = t.ctx.latent_norm
        return {
            "epoch": pos.start_epoch + pos.epoch, "global_step": pos.global_step,
            "models": {n: m.state_dict() for n, m in t.models.items()},
            "optimizers": {g: o.state_dict() for g, o in t.optimizers.items()},
            "schedulers": {g: s.state_dict() for g, s in t.schedulers.items()},
            "ema": {n: e.state_dict() for n, e in t.emas.items()},
            "latent_norm": {k: v.cpu() for k, v in latent_norm.items()} if latent_norm else None,
            "latent_norm_remeasure": self.latent_norm_remeasure,  # measured on a compressor that changed since
            "expander_spade": t.ctx.spade,  # how every later decode runs the expander (config/modes.expander_spade)
            "flow_shift": t.ctx.flow_shift,  # the timestep shift the flow trained with: every sampler follows it
            "model_config": self.config.model.model_dump(mode="json"),
            # The step's image size: generation from this checkpoint defaults to it (fluxflow/sampling/generate.py).
            "data": {**self.config.data.model_dump(mode="json"), "img_size": step.img_size},
            "pipeline_metadata": StepState(
                current_step=step.index, current_step_name=step.name, step_key=self.files.key,
                step_config=step.model_dump(mode="json"), seed=step.seed, step_start_epoch=pos.start_epoch,
                current_step_epoch=pos.epoch, batch=pos.batch, step_metrics=self.report.history,
                rng=capture_rng_state(), monitor=self.monitor.state_dict(), report=self.report.state_dict(),
                last_lr=dict(t.last_lr), epoch_end_due=epoch_end_due, batch_samples_due=batch_samples_due,
                completed=completed, outcome=self.outcome, input_sha256=self.files.input_sha256,
                key_inputs=self.files.key_inputs, data_identity=self.data.identity,
            ).to_dict(),
        }

    def finish(self) -> StepOutcome:
        """Final evaluation, `final.pt` (the last latest.pt, made immutable) and the reference for the next step."""
        pos, step = self.position, self.step
        if self.outcome == "max_epochs_reached":
            then = "the steps after it will not run (on_missed: fail)" if step.on_missed == "fail" else "moving on"
            log.warning("Step %s: %s did not drop below %s within max_epochs=%d; %s (smoothed value %.4g)",
                        step.name, self.monitor.metric, self.monitor.threshold, self.monitor.max_epochs, then,
                        self.monitor.smoothed())
        final_metrics = self.report.final_metrics()
        if self.world > 1:
            checksum = distributed.assert_in_sync(self.trainer.models[n] for n in sorted(self.trainer.ctx.trained))
            self.say(f"All {self.world} ranks hold the same weights (parameter checksum {checksum:.6f})")
        if self.main:
            sha = self.files.finalize()
            self.files.publish_final()  # an output on an object store: final.pt there before ref.json
        else:
            sha = ""
        if self.world > 1:
            sha = distributed.broadcast_object(sha)
        ref = CheckpointRef(uri=self.files.final_uri(), sha256=sha, step_name=step.name, step_key=self.files.key,
                            global_step=pos.global_step, epoch=pos.start_epoch + pos.epoch)
        result = StepResult(step_name=step.name, outcome=self.outcome, epochs_done=pos.epoch,
                            final_metrics=final_metrics, trained=True, resumed_from=self.resumed_from)
        if self.main:
            self.files.write_ref(ref, result)
        self.report.finished(ref, result)
        self.say(f"[{datetime.now():%H:%M:%S}] Finished step {step.name}: {self.outcome} after "
                 f"{counted(pos.epoch, 'epoch')}, global_step={pos.global_step}, checkpoint {ref.uri}")
        return StepOutcome(ref, result)
