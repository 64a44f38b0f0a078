"""What trains one pipeline step, batch by batch: its models, EMAs, optimizers and schedulers, and `train_batch`.

`build_trainer` is the one set-up of these objects: the step runner (fluxflow/train/step_run.py), the tests and the
throughput benchmark all build them here, so what they exercise is what a pipeline step trains.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from fluxflow.cache.text_cache import TextCache
from fluxflow.config.dag import depth
from fluxflow.config.modes import expander_spade, has_flow_mode, touches_vae, trained_components
from fluxflow.config.steps import resolution_shift
from fluxflow.losses import LPIPSLoss
from fluxflow.losses.flow import FlowObjective
from fluxflow.runtime import distributed
from fluxflow.runtime.device import autocast_dtype
from fluxflow.runtime.global_rng import GLOBAL_RNG
from fluxflow.train.batch_step import (WHOLE_BATCH, StepContext, TextFeatures, Window, encode_text, train_flow_batch,
                                       train_vae_batch)
from fluxflow.train.data_parallel import gradient_sync, synced_groups
from fluxflow.train.ema import EMA
from fluxflow.models import blank_caption_mask
from fluxflow.models.latents import normalise_latents, posterior
from fluxflow.train.lr_schedule import LrSchedule, build_schedulers
from fluxflow.train.optim import build_optimizers
from fluxflow.train.speed import runnable_models
from fluxflow.train.step_models import ema_components, prepare_emas, prepare_models, sampling_models
from fluxflow.checkpoints.step_state import saved_expander_spade, saved_flow_shift

log = logging.getLogger("fluxflow.train.step_run")  # the step runner's logger: its warnings reach the same handlers


@dataclass
class Trainer:
    """The trained state of one step and the per-batch update that advances it."""
    step: object  # fluxflow.config.ResolvedStep
    models: dict[str, nn.Module]
    emas: dict[str, EMA]
    ema_active: list[str]  # the EMAs this step updates; the others are carried unchanged
    optimizers: dict[str, torch.optim.Optimizer]
    schedulers: dict[str, LrSchedule]
    ctx: StepContext
    # The flow step's inputs from the caches (fluxflow/train/step_cache.py attaches them): with `cached_latents`,
    # train_batch receives the cached posterior means instead of images; with a `text_cache`, captions are looked up.
    cached_latents: bool = False
    text_cache: TextCache | None = None
    # The lr each group's latest update used (its first parameter group's; the no-decay group has the same lr), for
    # the log's `lr_<group>`: python floats, read before the schedules step, so logging them costs no host sync. Saved
    # in latest.pt (StepState.last_lr), so a resumed run logs them where an uninterrupted one does.
    last_lr: dict[str, float] = field(default_factory=dict)

    def train_batch(self, images: torch.Tensor, captions: list[str], global_step: int, update: int,
                    window: Window = WHOLE_BATCH) -> dict[str, torch.Tensor]:
        """One (micro-)batch through the step's losses; at the end of its accumulation window the optimizers, the
        EMAs and the per-update schedules advance. Metrics stay on the device (no host sync).

        `images` are the batch's images [B, C, H, W], or, with `cached_latents`, their cached posterior means
        [B, c, h, w] (the latent cache's items). `global_step` (batches of the whole pipeline) seeds this batch's
        random draws (`batch_seed`). `update` counts this step's optimizer updates so far.
        """
        ctx, step = self.ctx, self.step
        ctx.generator.manual_seed(batch_seed(step.seed, global_step))
        metrics: dict[str, torch.Tensor] = {}
        if touches_vae(step):
            metrics.update(train_vae_batch(ctx, images, update, window))
        if has_flow_mode(step):
            with gradient_sync(ctx.models, window.last):  # DDP (flow steps under torchrun): all-reduce at window end
                latents = normalise_latents(self.posterior_means(images), ctx.latent_norm)
                # a blank caption trains as a dropped one, from the text cache too (looked up by caption)
                flow_metrics = train_flow_batch(ctx, latents, self.text_features(captions), window,
                                                blank_caption_mask(captions, ctx.device))
            if "skipped_updates" in metrics:
                flow_metrics["skipped_updates"] = flow_metrics["skipped_updates"] + metrics["skipped_updates"]
            metrics.update(flow_metrics)
        if window.last:  # the optimizers stepped (or skipped a non-finite update): EMAs and lr schedules follow
            self.last_lr = {group: opt.param_groups[0]["lr"] for group, opt in self.optimizers.items()}
            for name in self.ema_active:
                self.emas[name].update(self.models[name])
            for schedule in self.schedulers.values():
                schedule.after_optimizer_step()
        return metrics

    def posterior_means(self, inputs: torch.Tensor) -> torch.Tensor:
        """The batch's posterior means: cached ones as they come, or the latent encoder's of its images."""
        return inputs if self.cached_latents else posterior(self.ctx.latent_encoder, inputs, self.ctx.amp_dtype)[0]

    def text_features(self, captions: list[str]) -> TextFeatures:
        """The text encoder's outputs for the batch's captions: looked up in the text cache, or encoded now."""
        if self.text_cache is not None:
            return TextFeatures(*self.text_cache.features(captions, self.ctx.device))
        return encode_text(self.ctx, *self.tokenize(captions))

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) of the captions on the device: the one tokenization of training and of the text cache."""
        return self.models["text_encoder"].tokenize(list(captions), self.ctx.device)  # the encoder's own tokenizer

    def set_latent_norm(self, latent_norm: dict[str, torch.Tensor] | None) -> None:
        """The per-channel latent shift/scale the flow step trains with (None for steps without the flow model)."""
        self.ctx.latent_norm = {k: v.to(self.ctx.device) for k, v in latent_norm.items()} if latent_norm else None

    def sampling_models(self) -> dict[str, nn.Module]:
        return sampling_models(self.models, self.emas)


def batch_seed(seed: int, global_step: int) -> int:
    """The seed of one batch's noise, timesteps, CFG mask and posterior samples: a function of the run's seed, the
    batch and the torchrun rank, so ranks draw different numbers for their slices and a resume draws the same.
    Taken modulo 2**64 (torch takes no seed past 2**64 - 1): a seed the config accepts (up to 2**63 - 1) trained,
    where one above ~1.8e13 stopped the step with an overflow; every value torch took before is unchanged."""
    return ((seed * 1_000_003 + global_step) * distributed.world_size() + distributed.rank()) % 2**64


def flow_objective(step, img_size: int) -> FlowObjective:
    """The step's timestep draw and loss weighting, with its shift scaled to the images it trains on."""
    return FlowObjective(logit_mean=step.t_logit_mean, logit_std=step.t_logit_std,
                         shift=resolution_shift(step.t_shift, img_size, step.t_shift_base_size),
                         uniform_share=step.uniform_t_share, weighting=step.loss_weighting,
                         min_snr_gamma=step.min_snr_gamma)


def build_trainer(config, step, state: dict | None, device: torch.device, *, max_epochs: int,
                  updates_per_epoch: int | None = None, resuming: bool = False) -> Trainer:
    """Models from `state` (or fresh), frozen/trained as the step declares, with EMAs, optimizers and schedulers.
    `resuming`: `state` is this step's own latest.pt (its EMA decay is kept), not a parent's checkpoint.
    `updates_per_epoch`: optimizer updates per epoch, which per-update lr schedules span (None: per-epoch only).

    Fresh components start from the seeded weights of the step's `seed` (training.seed unless the step sets one)
    + its depth in the pipeline's tree (fluxflow/config/dag.py), so every process (and every torchrun rank, which
    then takes rank 0's weights anyway) builds the same ones, and so do branches of one parent: hypotheses compared
    from the same checkpoint start their fresh components alike, as they share data order and noise, whatever their
    places in the file. (In a chain of steps the depth is the step's index, the rule before branches had a depth.)
    """
    trained = trained_components(step)
    with GLOBAL_RNG:  # the seed's draws are this step's alone, whatever other branches of the run do meanwhile
        torch.manual_seed(step.seed + depth(config.resolved_steps(), step.name))
        models = prepare_models(config, step, state, device)
    if distributed.world_size() > 1:
        distributed.broadcast_modules(models.values())
    emas = prepare_emas(step, models, state, trained, resuming)
    optimizers = build_optimizers(step, models, trained)
    schedulers = build_schedulers(step.optimization.schedulers, optimizers, max_epochs, updates_per_epoch)
    for group, schedule in schedulers.items():
        if schedule.inert and distributed.is_main():
            log.warning("Step %s: optimization.schedulers.%s: %s", step.name, group, schedule.inert)
    lpips = LPIPSLoss().to(device) if step.use_lpips and step.train_vae else None
    runnable = runnable_models(models, step, config.training, device, trained)
    # A frozen component with an EMA is used as its EMA weights, as samples and exports use it: the frozen text
    # encoder a flow step trains on, keys its text cache on and samples with is one network (the latent side does the
    # same with the EMA compressor, `latent_encoder`).
    runnable.update({name: emas[name].shadow for name in set(emas) - trained})
    objective = flow_objective(step, step.img_size)
    # The sampler's shift is the one the flow model trained with, by the rule of `expander_spade`: a step that trains
    # flow_processor sets it; any other step carries it, also a flow step that freezes flow_processor (a text-encoder
    # fine-tune), whose own t_shift shaped no weight of the flow model.
    shift = objective.shift if "flow_processor" in trained else saved_flow_shift(state)
    ctx = StepContext(step=step, models=runnable, optimizers=optimizers, trained=trained, device=device,
                      amp_dtype=autocast_dtype(device, step.precision),
                      generator=torch.Generator(device=device), lpips=lpips,
                      latent_encoder=sampling_models(models, emas).get("compressor"),
                      synced_groups=synced_groups(runnable),
                      spade=expander_spade(step, saved_expander_spade(state)),
                      flow_objective=objective,
                      flow_shift=shift)
    return Trainer(step=step, models=models, emas=emas,
                   ema_active=sorted(ema_components(step, trained)), optimizers=optimizers, schedulers=schedulers,
                   ctx=ctx)
