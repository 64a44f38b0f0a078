"""What one batch trains: `train_vae_batch` (the VAE, and through it `train_discriminator_batch`) and
`train_flow_batch` (the flow model, and the text encoder where trained). Each takes the models, optimizers and one
batch and returns 0-dim metric tensors.

No `.item()` and no host sync in here: metrics stay on the device until the step runner reads them at a log interval,
and a non-finite loss or gradient skips its update on the device (see `optim.optimizer_step`) and is counted in
`skipped_updates`. With gradient accumulation each call is one micro-batch of a `Window`: gradients add up over the
window and the optimizers step at its end.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import nn

from fluxflow.runtime.device import autocast
from fluxflow.losses import (adaptive_weight, hinge_d_loss, hinge_g_loss, kl_loss, kl_weight, r1_penalty,
                             rectified_flow_loss, reconstruction_loss)
from fluxflow.config.modes import image_stat_terms
from fluxflow.losses.image_stats import IMAGE_STAT_LOSSES
from fluxflow.losses.flow import DEFAULT_OBJECTIVE, FlowObjective
from fluxflow.models import cfg_drop_mask, sample_latent
from fluxflow.train.optim import optimizer_step


@dataclass
class StepContext:
    """What the per-batch steps need besides the batch; built once per pipeline step by the runner."""
    step: Any  # fluxflow.config.ResolvedStep
    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    trained: set[str]
    device: torch.device
    amp_dtype: torch.dtype | None
    generator: torch.Generator
    lpips: nn.Module | None = None
    # Per loss: whether every micro-batch of the running accumulation window had a finite loss.
    window_finite: dict[str, torch.Tensor] = field(default_factory=dict)
    latent_norm: dict[str, torch.Tensor] | None = None
    # The compressor weights flow latents come from: the EMA ones where they exist, as samples decode with the EMA
    # expander (fluxflow/models/latents.py).
    latent_encoder: nn.Module | None = None
    # Optimizer groups whose gradients DDP averaged in the backward (fluxflow/train/data_parallel.py).
    synced_groups: frozenset[str] = frozenset()
    # The expander decodes with SPADE (fluxflow.config.modes.expander_spade): in training, samples and evaluation.
    spade: bool = False
    # The step's timestep draw and loss weighting for flow training (trainer.flow_objective).
    flow_objective: FlowObjective = DEFAULT_OBJECTIVE
    # The timestep shift the flow was trained with, which every sampler of it follows (samples, evaluation, generate,
    # export): this step's when it trains the flow, else the checkpoint's (fluxflow.checkpoints.step_state).
    flow_shift: float = 1.0


@dataclass(frozen=True)
class Window:
    """Where a batch stands in its gradient-accumulation window of `gradient_accumulation_steps` micro-batches."""
    scale: float = 1.0  # 1 / the window's number of micro-batches: the window's gradient is their mean
    last: bool = True  # this micro-batch ends the window: the optimizers step


WHOLE_BATCH = Window()  # no accumulation: every batch is a window of its own


def backward_and_update(ctx: StepContext, loss: torch.Tensor, key: str, groups: tuple[str, ...],
                        window: Window) -> dict[str, torch.Tensor]:
    """Backpropagate `loss` (scaled for the window) and, at the window's end, step the optimizers of `groups` as one
    update (`optimizer_step`). A window with a non-finite loss (tracked under `key` across its micro-batches) or a
    non-finite gradient skips its update on the device. Returns `skipped_updates` (1 for a skipped update) and, at the
    window's end, `grad_norm_<group>` (each group's norm before clipping)."""
    finite = torch.isfinite(loss)
    (loss * window.scale).backward()
    earlier = ctx.window_finite.pop(key, None)
    finite = finite if earlier is None else earlier & finite
    if not window.last:
        ctx.window_finite[key] = finite
        return {"skipped_updates": loss.new_zeros(())}
    out: dict[str, torch.Tensor] = {"skipped_updates": (~finite).float()}
    present = [group for group in groups if group in ctx.optimizers]
    if present:
        norms, skipped = optimizer_step([ctx.optimizers[g] for g in present], finite, ctx.step.grad_clip,
                                        present[0] in ctx.synced_groups)
        out.update({f"grad_norm_{group}": norm for group, norm in zip(present, norms)})
        out["skipped_updates"] = torch.maximum(out["skipped_updates"], skipped)
    return out


def train_vae_batch(ctx: StepContext, images: torch.Tensor, update: int,
                    window: Window = WHOLE_BATCH) -> dict[str, torch.Tensor]:
    """Reconstruction (`train_vae`), GAN (`gan_training`) or both; LPIPS and SPADE as the step says.

    `update` counts this pipeline step's optimizer updates so far: the KL warm-up and the lazy R1 interval run on it,
    so a later step that declares a warm-up gets it from its own start.

    GAN-only mode (train_vae false): the encoder learns from KL + G loss, the latent is not detached.
    """
    step, m = ctx.step, ctx.models
    compressor, expander = m["compressor"], m["expander"]
    discriminator = m.get("discriminator") if step.gan_training else None
    # `freeze` may take any of these away (a decoder-only fine-tune freezes the compressor): a frozen one is used,
    # never updated, and a pass with nothing to update is not run.
    trains_vae = bool(ctx.trained & {"compressor", "expander"})
    trains_d = discriminator is not None and "discriminator" in ctx.trained
    zero = images.new_zeros(())
    metrics: dict[str, torch.Tensor] = {}

    if trains_d:
        discriminator.requires_grad_(False)  # G pass: no D grads
    with autocast(ctx.device, ctx.amp_dtype):
        mean, logvar = compressor(images)
        recon = expander(sample_latent(mean, logvar, ctx.generator), spade=ctx.spade)
    kl_raw, kl_clamped = kl_loss(mean.float(), logvar.float(), step.kl_free_bits)
    loss = kl_weight(update, step.kl_beta, step.kl_warmup_steps) * kl_clamped
    rec = nll = zero  # the pixel reconstruction loss (logged as vae_loss); with LPIPS added, VQGAN's "nll"
    if step.train_vae:
        rec = nll = reconstruction_loss(recon.float(), images, step.recon_l1_weight, step.recon_mse_weight)
        if ctx.lpips is not None:
            # lambda_lpips 0: LPIPS is still measured and logged, but without a graph (no backward through its
            # network, as for lambda_adv below) and left out of the loss
            perceptual = step.lambda_lpips > 0
            with torch.set_grad_enabled(perceptual and torch.is_grad_enabled()), autocast(ctx.device, ctx.amp_dtype):
                lp = ctx.lpips(recon, images).float().mean()
            if perceptual:
                nll = rec + step.lambda_lpips * lp
            metrics["lpips_loss"] = lp.detach()
        for term in image_stat_terms(step):  # the original tool's image-statistics regularisers
            value = IMAGE_STAT_LOSSES[term](recon, images)
            nll = nll + getattr(step, f"lambda_{term}") * value
            metrics[f"{term}_loss"] = value.detach()
        loss = loss + nll
    if discriminator is not None:
        # lambda_adv 0 turns the generator term off: g_loss is still measured (logged, watchable) but without a
        # graph, so no backward runs through D for it and a non-finite D output cannot skip the VAE's update.
        adversarial = step.lambda_adv > 0
        with torch.set_grad_enabled(adversarial and torch.is_grad_enabled()), autocast(ctx.device, ctx.amp_dtype):
            g = hinge_g_loss(discriminator(recon).float())
        if adversarial:
            weight = step.lambda_adv
            if step.adaptive_adv_weight and step.train_vae and ctx.trained.intersection({"expander"}):
                # balanced against the whole reconstruction loss, LPIPS included (as VQGAN's nll)
                weight = weight * adaptive_weight(nll, g, expander.last_layer_weight)
            loss = loss + weight * g
        metrics["g_loss"] = g.detach()

    metrics["skipped_updates"] = zero
    if trains_vae:
        metrics.update(backward_and_update(ctx, loss, "vae", ("vae",), window))
    if trains_d:
        discriminator.requires_grad_(True)
        d_metrics = train_discriminator_batch(ctx, images, recon.detach(), update, window)
        d_metrics["skipped_updates"] = d_metrics["skipped_updates"] + metrics["skipped_updates"]
        metrics.update(d_metrics)
    metrics.update(vae_loss=rec.detach(), kl_loss=kl_raw.detach(), kl_clamped=kl_clamped.detach())
    return metrics


def train_discriminator_batch(ctx: StepContext, real: torch.Tensor, fake: torch.Tensor, update: int,
                              window: Window = WHOLE_BATCH) -> dict[str, torch.Tensor]:
    """Hinge D loss, plus lazy R1 every `r1_interval` updates scaled by interval (so its average strength is γ/2)."""
    step, disc = ctx.step, ctx.models["discriminator"]
    with autocast(ctx.device, ctx.amp_dtype):
        real_logits, fake_logits = disc(real).float(), disc(fake).float()
    d_loss = hinge_d_loss(real_logits, fake_logits)
    total = d_loss
    # D's mean logits: a D that tells real from fake holds them apart; a flat one has both near 0 (d_loss ~2)
    out = {"d_loss": d_loss.detach(), "d_logit_real": real_logits.mean().detach(),
           "d_logit_fake": fake_logits.mean().detach()}
    if step.r1_gamma > 0 and update % step.r1_interval == 0:
        r1 = r1_penalty(disc, real)  # fp32, eager: double backward
        # γ/2 · penalty, times the interval: every `interval` updates keeps the average strength of every update
        # (StyleGAN2's lazy regularisation)
        total = total + 0.5 * step.r1_gamma * step.r1_interval * r1
        out["r1_penalty"] = r1.detach()
    out.update(backward_and_update(ctx, total, "discriminator", ("discriminator",), window))
    return out


class TextFeatures(NamedTuple):
    """The text encoder's outputs for a batch of captions: computed now (`encode_text`) or read from the text cache."""
    tokens: torch.Tensor  # [B, L, D]
    pooled: torch.Tensor  # [B, D]
    mask: torch.Tensor  # [B, L] bool


def encode_text(ctx: StepContext, ids: torch.Tensor, mask: torch.Tensor) -> TextFeatures:
    """The text encoder on tokenized captions, with a graph only where it trains (`train_diff_full`, unfreeze)."""
    with torch.set_grad_enabled("text_encoder" in ctx.trained), autocast(ctx.device, ctx.amp_dtype):
        tokens, pooled = ctx.models["text_encoder"](ids, mask)
    return TextFeatures(tokens, pooled, mask)


def train_flow_batch(ctx: StepContext, latents: torch.Tensor, text: TextFeatures,
                     window: Window = WHOLE_BATCH, blank: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Rectified flow (t = 1 is noise) on normalised latents of the frozen VAE, conditioned on `text`; the text
    encoder learns through `text` where it was encoded with a graph. The Trainer supplies both, encoded now or read
    from the caches (fluxflow/train/trainer.py). `blank`: the rows whose caption is blank (blank_caption_mask),
    trained unconditionally like the `cfg_dropout` rows (whose draw they leave as it was)."""
    drop = cfg_drop_mask(latents.shape[0], ctx.step.cfg_dropout, latents.device, ctx.generator)
    if blank is not None:
        drop = drop | blank
    with autocast(ctx.device, ctx.amp_dtype):
        loss = rectified_flow_loss(ctx.models["flow_processor"], latents, text.tokens, text.mask, text.pooled, drop,
                                   ctx.generator, ctx.flow_objective).float()
    return {"flow_loss": loss.detach(), **backward_and_update(ctx, loss, "flow", ("flow", "text_encoder"), window)}
