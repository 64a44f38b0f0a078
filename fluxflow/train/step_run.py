"""Run one pipeline step from its input checkpoint to its transition: the training loop, top to bottom.

`run_step` is what a Prefect task calls (flows/) and what `run_pipeline` (fluxflow/train/pipeline.py) calls without any
orchestrator. It returns a `StepOutcome(ref, result)`; nothing else crosses between steps.

Files per step, under `<output>/checkpoints/<step>/`: `latest.pt` (mid-step, atomic, every
`checkpoint_save_interval` batches and at each epoch end), `final.pt` (immutable, written once at the end) and
`ref.json` (the returned reference, its result and the step's resolved config). A step whose `final.pt` exists for
the same step key is skipped; an interrupted one resumes from `latest.pt` at the saved epoch and batch.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist

from fluxflow.runtime import distributed
from fluxflow.checkpoints.io import capture_rng_state, finalize, load_checkpoint, restore_rng_state, save_checkpoint
from fluxflow.checkpoints.ref import CheckpointRef, StepOutcome, StepResult
from fluxflow.data import ResumableBatchSampler, build_dataset, make_loader
from fluxflow.runtime.device import autocast_dtype, resolve_device
from fluxflow.evaluation.evaluate import evaluate_step
from fluxflow.runtime.gpu_claim import claimed_device
from fluxflow.losses import LPIPSLoss
from fluxflow.train.latents import measure_latent_norm
from fluxflow.models import tokenize
from fluxflow.config.modes import step_metrics, trained_components
from fluxflow.train.optim import build_optimizers, build_schedulers, scheduler_step
from fluxflow.checkpoints.lock import RunLock
from fluxflow.sampling.samples import write_samples
from fluxflow.checkpoints.step_files import StepFiles, plan_step
from fluxflow.runtime.stop_request import StepInterrupted, stop_requested
from fluxflow.train.step_models import ema_components, prepare_emas, prepare_models, sampling_models
from fluxflow.train.tracking import ConsoleJsonlTracker, NullTracker, Progress, batch_progress, metrics_file, trim_jsonl
from fluxflow.train.batch_step import StepContext, flow_step, vae_step
from fluxflow.train.transition import TransitionMonitor

log = logging.getLogger("fluxflow.train.step_run")

N_HOLDOUT_SAMPLES = 8


def run_step(config, step_name: str, parent: CheckpointRef | None = None, tracker=None,
             device: str | None = None) -> StepOutcome:
    files = plan_step(config, step_name)
    device_ = resolve_device(device or config.training.device)
    distributed.init_from_env(device_)  # a no-op unless started by torchrun
    main = distributed.is_main()
    tracker = (tracker or ConsoleJsonlTracker(Path(config.output.output_path))) if main else NullTracker()
    files.dir.mkdir(parents=True, exist_ok=True)
    with RunLock(files.dir) if main else contextlib.nullcontext():
        done = files.completed()
        if done is not None:
            if main:
                print(f"Skipping step {step_name}: already complete ({files.final})", flush=True)
            ref, result = done
            result.trained = False
            return StepOutcome(ref, result)
        if stop_requested():  # a step the interrupted run had queued: nothing loaded, nothing written
            raise StepInterrupted(f"step {step_name} not started: the run was interrupted")
        if main:
            files.set_aside_stale()
        if distributed.active():
            dist.barrier()
            return _train(config, files, parent, tracker, distributed.local_device(device_))
        with claimed_device(device_, torch.cuda.device_count() if device_.type == "cuda" else 0) as device_:
            if device_.index is not None:  # implicit "cuda" allocations of this thread go to the claimed GPU too
                torch.cuda.set_device(device_)
            return _train(config, files, parent, tracker, device_)


def _input_state(config, files: StepFiles, parent: CheckpointRef | None) -> tuple[dict | None, bool]:
    """(state to start from, whether it is this step's own latest.pt)."""
    if files.latest.exists():
        return load_checkpoint(files.latest), True
    if parent is not None:
        return load_checkpoint(parent.uri, expected_sha256=parent.sha256), False
    if config.model_checkpoint:
        return load_checkpoint(config.model_checkpoint), False
    return None, False


def _train(config, files: StepFiles, parent, tracker, device: torch.device) -> StepOutcome:
    step, out = files.step, Path(config.output.output_path)
    seed = config.training.seed
    state, resuming = _input_state(config, files, parent)
    meta = (state or {}).get("pipeline_metadata", {})
    amp = autocast_dtype(device, config.training.precision)

    ds_cfg = config.dataset_for(step)
    train_set = build_dataset(ds_cfg, config.data.img_size, config.data.channels, "train")
    holdout_set = build_dataset(ds_cfg, config.data.img_size, config.data.channels, "holdout")
    n_holdout = min(N_HOLDOUT_SAMPLES, len(holdout_set))
    holdout = torch.stack([holdout_set[i][0] for i in range(n_holdout)]).to(device) if n_holdout else None
    per_epoch = len(ResumableBatchSampler(len(train_set), step.batch_size, seed))
    n_batches = min(per_epoch, step.max_steps or per_epoch)
    if n_batches == 0:
        raise ValueError(f"step {step.name}: dataset {step.dataset!r} has {len(train_set)} items, fewer than one "
                         f"batch of {step.batch_size}")

    trained = trained_components(step)
    torch.manual_seed(seed + step.index)  # fresh components start from the same weights in any process
    models = prepare_models(config, step, state, device)
    main, world, rank = distributed.is_main(), distributed.world_size(), distributed.rank()
    say = functools.partial(print, flush=True) if main else (lambda *_: None)  # rank 0 speaks for all ranks
    if world > 1:
        if step.batch_size % world:
            raise ValueError(f"step {step.name}: batch_size {step.batch_size} is not divisible by "
                             f"nproc_per_node {world}")
        distributed.broadcast_modules(models.values())  # fresh components start from rank 0's weights
    emas = prepare_emas(step, models, state, trained)
    ema_active = sorted(ema_components(step, trained))
    optimizers, sched_cfg = build_optimizers(step, models, trained)
    monitor = TransitionMonitor(step.transition_on, step.n_epochs, device)
    schedulers = build_schedulers(sched_cfg, optimizers, monitor.max_epochs)
    flow_mode = step.train_diff or step.train_diff_full
    vae_mode = step.train_vae or step.gan_training or step.train_spade or step.use_lpips
    latent_norm = (state or {}).get("latent_norm")
    if flow_mode and latent_norm is None:
        latent_norm = measure_latent_norm(models["compressor"], _first_batch(train_set, step.batch_size, seed, device))
    latent_norm = {k: v.to(device) for k, v in latent_norm.items()} if latent_norm else None

    global_step = int((state or {}).get("global_step", 0))
    step_start_epoch = int(meta.get("step_start_epoch", 0)) if resuming else int((state or {}).get("epoch", 0))
    epoch_in_step, start_batch = 0, 0
    history: dict = dict(meta.get("step_metrics", {}))
    history.setdefault(step.name, {})
    resumed_from = None
    if resuming:
        epoch_in_step, start_batch = int(meta["current_step_epoch"]), int(meta["batch"])
        for group, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][group])
        for group, sched in schedulers.items():
            sched.load_state_dict(state["schedulers"][group])
        monitor.load_state_dict(meta["monitor"])
        restore_rng_state(meta["rng"])
        resumed_from = (epoch_in_step, start_batch)
        say(f"Resuming from checkpoint: step={step.index} ({step.name}), epoch={epoch_in_step + 1}, "
              f"batch={start_batch}")
    say(f"Starting step: {step.name}, epoch {epoch_in_step + 1}, batch {start_batch}")

    ctx = StepContext(step=step, models=models, optimizers=optimizers, trained=trained, device=device,
                      amp_dtype=amp, generator=torch.Generator(device=device),
                      lpips=LPIPSLoss().to(device) if step.use_lpips and step.train_vae else None,
                      latent_norm=latent_norm)
    if resuming and main:  # lines logged after the checkpoint we resume from will be logged again
        trim_jsonl(metrics_file(out, step.name), max_global_step=global_step)
    tracker.step_started(step, files.key, files.n_steps, resuming)

    def checkpoint_state(epoch_in: int, batch: int, completed: bool = False) -> dict:
        return {
            "epoch": step_start_epoch + epoch_in, "global_step": global_step,
            "models": {n: m.state_dict() for n, m in models.items()},
            "optimizers": {g: o.state_dict() for g, o in optimizers.items()},
            "schedulers": {g: s.state_dict() for g, s in schedulers.items()},
            "ema": {n: e.state_dict() for n, e in emas.items()},
            "latent_norm": {k: v.cpu() for k, v in latent_norm.items()} if latent_norm else None,
            # The sizes the weights were built with: a checkpoint alone is enough for fluxflow-generate.
            "model_config": config.model.model_dump(mode="json"), "data": config.data.model_dump(mode="json"),
            "pipeline_metadata": {
                "current_step": step.index, "current_step_name": step.name, "step_start_epoch": step_start_epoch,
                "current_step_epoch": epoch_in, "batch": batch, "step_metrics": history, "step_key": files.key,
                "step_config": step.model_dump(mode="json"), "seed": seed, "rng": capture_rng_state(),
                "sampler": {"epoch": step_start_epoch + epoch_in, "batch": batch, "seed": seed},
                "monitor": monitor.state_dict(), "completed": completed, "outcome": outcome,
            },
        }

    def save(epoch_in: int, batch: int, completed: bool = False) -> None:
        if main:  # only rank 0 writes checkpoints (all ranks hold the same weights)
            save_checkpoint(checkpoint_state(epoch_in, batch, completed), files.latest)

    def samples(epoch_in: int, batch: int | None) -> None:
        if config.output.no_samples or not main:
            return
        for path in write_samples(out / "samples", step=step, step_number=step.index + 1, epoch=epoch_in + 1,
                                  batch=batch, tag=files.key[:6], models=sampling_models(models, emas),
                                  holdout=holdout, captions=list(config.output.sample_captions),
                                  latent_norm=latent_norm, config=config, seed=seed):
            tracker.log_image(path)

    def progress(epoch: int, batch: int, sec_per_batch: float) -> Progress:
        return Progress(step_name=step.name, step_index=step.index + 1, n_steps=files.n_steps, epoch=epoch,
                        n_epochs=monitor.max_epochs, batch=batch, n_batches=n_batches, global_step=global_step,
                        sec_per_batch=sec_per_batch)

    def evaluate(epochs: int) -> dict[str, float]:
        """Evaluation on the held-out split with the weights samples come from; logged at the epoch's global step."""
        if not main:
            return {}
        found = evaluate_step(step, sampling_models(models, emas), holdout_set, train_set, config, latent_norm,
                              device, out / "eval_cache")
        found = {f"eval_{k}": v for k, v in found.items()}
        if found:
            tracker.log_metrics(found, progress(epochs, n_batches, float("nan")))  # NaN: not a timed batch
            say(f"[{datetime.now():%H:%M:%S}] Evaluation of {step.name} after epoch {epochs}: "
                + ", ".join(f"{k} {v:.4g}" for k, v in sorted(found.items())))
        return found

    def interrupted(epoch_in: int, batch: int, saved: bool = False) -> None:
        """Stop here on request (fluxflow/runtime/stop_request.py): save this position, so the next run resumes at it."""
        if not saved:
            save(epoch_in, batch)
        say(f"[{datetime.now():%H:%M:%S}] Interrupted step {step.name} at epoch {epoch_in + 1}, batch {batch}: "
            f"saved {files.latest}")
        raise StepInterrupted(f"step {step.name} interrupted at epoch {epoch_in + 1}, batch {batch}")

    shown = set(step_metrics(step))
    last_means: dict[str, float] = {}
    # A step killed after its last epoch was saved (before final.pt) has nothing left to train.
    outcome = meta.get("outcome") if resuming and meta.get("completed") else None
    epochs_done = epoch_in_step
    while outcome is None:
        # Under torchrun each rank loads only its slice of every global batch.
        loader = make_loader(train_set, step.batch_size, step.workers, seed, step_start_epoch + epoch_in_step,
                             start_batch, rank=rank, world=world)
        sums: dict[str, torch.Tensor] = {}
        count, tick = 0, time.perf_counter()
        bar = batch_progress(n_batches, start_batch, f"{step.name} epoch {epoch_in_step + 1}")
        for batch, (images, captions) in enumerate(loader, start=start_batch):
            if batch >= n_batches:
                break
            images = images.to(device, non_blocking=True)
            ctx.generator.manual_seed(seed * 1_000_003 + global_step)  # per-batch draws: exact on resume
            metrics: dict[str, torch.Tensor] = {}
            if vae_mode:
                metrics.update(vae_step(ctx, images, global_step))
            if flow_mode:
                ids, mask = tokenize(list(captions), config.model.text_max_len)
                flow_metrics = flow_step(ctx, images, ids.to(device, non_blocking=True),
                                         mask.to(device, non_blocking=True))
                if "skipped_updates" in metrics:
                    flow_metrics["skipped_updates"] = flow_metrics["skipped_updates"] + metrics["skipped_updates"]
                metrics.update(flow_metrics)
            for name in ema_active:
                emas[name].update(models[name])
            monitor.observe(metrics)
            for k, v in metrics.items():
                sums[k] = sums[k] + v if k in sums else v.clone()
            count += 1
            global_step += 1
            bar.update(1)
            done_batches = batch + 1
            if done_batches % config.output.log_interval == 0 or done_batches == n_batches:
                last_means = _read_means(sums, count)  # the one host sync per log interval
                for k, v in last_means.items():
                    history[step.name].setdefault(k, []).append(v)
                elapsed = time.perf_counter() - tick
                tracker.log_metrics(last_means, progress(epoch_in_step + 1, done_batches, elapsed / count))
                sums, count, tick = {}, 0, time.perf_counter()
            if done_batches % config.output.checkpoint_save_interval == 0 and done_batches < n_batches:
                save(epoch_in_step, done_batches)
                samples(epoch_in_step, done_batches)
            if done_batches < n_batches and stop_requested():  # the epoch's end below saves and checks again
                bar.close()
                interrupted(epoch_in_step, done_batches)
        bar.close()
        epochs_done = epoch_in_step + 1
        smoothed = monitor.smoothed()
        for sched in schedulers.values():
            scheduler_step(sched, smoothed if smoothed is not None else last_means.get(monitor.metric or ""))
        outcome = monitor.outcome_after_epoch(epochs_done)
        epoch_in_step, start_batch = epochs_done, 0
        save(epoch_in_step, 0, completed=outcome is not None)
        samples(epochs_done - 1, None)
        if outcome is None and stop_requested():
            interrupted(epoch_in_step, 0, saved=True)
        if outcome is None and step.eval_interval and epochs_done % step.eval_interval == 0:
            evaluate(epochs_done)

    if outcome == "max_epochs_reached":
        log.warning("Step %s: %s did not drop below %s within max_epochs=%d; moving on (smoothed value %.4g)",
                    step.name, monitor.metric, monitor.threshold, monitor.max_epochs, monitor.smoothed())
    final_metrics = {k: values[-1] for k, values in history[step.name].items() if k in shown and values}
    final_metrics.update(evaluate(epochs_done))
    final_metrics["skipped_updates"] = float(sum(history[step.name].get("skipped_updates", [])))
    if monitor.smoothed() is not None:
        final_metrics[f"smoothed_{monitor.metric}"] = monitor.smoothed()
    if world > 1:
        checksum = distributed.assert_in_sync(models[name] for name in sorted(trained))
        if main:
            say(f"All {world} ranks hold the same weights (parameter checksum {checksum:.6f})")
    sha = finalize(files.latest, files.final) if main else ""
    if world > 1:
        sha = distributed.broadcast_object(sha)
    ref = CheckpointRef(uri=str(files.final), sha256=sha, step_name=step.name, step_key=files.key,
                        global_step=global_step, epoch=step_start_epoch + epochs_done)
    result = StepResult(step_name=step.name, outcome=outcome, epochs_done=epochs_done,
                        final_metrics=final_metrics, trained=True, resumed_from=resumed_from)
    if main:
        files.write_ref(ref, result)
    tracker.log_artifact(metrics_file(out, step.name))
    tracker.step_finished(ref, result)
    say(f"[{datetime.now():%H:%M:%S}] Finished step {step.name}: {outcome} after {epochs_done} epoch(s), "
          f"global_step={global_step}, checkpoint {files.final}")
    return StepOutcome(ref, result)


def _read_means(sums: dict[str, torch.Tensor], count: int) -> dict[str, float]:
    if not sums:
        return {}
    names = sorted(sums)
    values = distributed.mean_across_ranks(torch.stack([sums[n].float() for n in names]).div_(count)).tolist()
    means = dict(zip(names, values))
    if "skipped_updates" in means:
        means["skipped_updates"] = means["skipped_updates"] * count  # a count, not a mean
    return means


def _first_batch(dataset, batch_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """Images of the first training batch, to measure the latent normalisation of the first flow step."""
    return next(iter(make_loader(dataset, batch_size, 0, seed, 0, 0)))[0].to(device)
