"""The one place that maps a step's training modes to components, optimizer groups and metrics.

No torch here: validation and the CLI summary use it. A "step" is anything with the mode attributes of a
`ResolvedStep` (train_vae, gan_training, train_spade, use_lpips, train_diff, train_diff_full, unfreeze).

What each mode trains (the original tool's modes):
- train_vae:        compressor + expander, reconstruction (L1/MSE) + KL loss.
- gan_training:     discriminator (hinge + R1), and compressor + expander through the generator loss. With
                    train_vae: false this is GAN-only mode: the encoder learns from KL + G loss (latent not detached).
- train_spade:      SPADE conditioning in the expander; a modifier of a VAE/GAN step, not a mode of its own.
- use_lpips:        LPIPS perceptual loss added to the reconstruction; a modifier of a train_vae step.
- train_diff:       flow_processor on latents of the (frozen) VAE, text encoder frozen.
- train_diff_full:  flow_processor and text_encoder together.
`unfreeze` adds components the modes would not train (e.g. the text encoder in a train_diff step); `freeze` takes
away components they would (e.g. the compressor of a decoder-only VAE/GAN fine-tune): a frozen component gets no
gradient and no optimizer state, and the step trains the rest. The resolved `freeze` list no longer holds what
`unfreeze` names (fluxflow/config/steps.py), so unfreeze wins.
"""
from __future__ import annotations

from typing import Any

COMPONENTS: tuple[str, ...] = ("compressor", "expander", "flow_processor", "text_encoder", "discriminator")

# Optimizer group -> the components whose parameters it updates.
OPTIMIZER_GROUPS: dict[str, tuple[str, ...]] = {
    "vae": ("compressor", "expander"),
    "discriminator": ("discriminator",),
    "flow": ("flow_processor",),
    "text_encoder": ("text_encoder",),
}

# Modes that make a step train something; train_spade and use_lpips only modify a VAE/GAN step.
PRIMARY_MODES: tuple[str, ...] = ("train_vae", "gan_training", "train_diff", "train_diff_full")
ALL_MODES: tuple[str, ...] = ("train_vae", "gan_training", "use_lpips", "train_spade", "train_diff", "train_diff_full")

# The original tool's image-statistics regularisers (fluxflow/losses/image_stats.py): modifiers of a train_vae step,
# each switched on by `train_<term>`, weighted by `lambda_<term>` and logged as `<term>_loss`.
IMAGE_STAT_TERMS: tuple[str, ...] = ("colorstats", "histogram", "contrast", "coarseness")

# Every metric a step can produce, with the original tool's names.
ALL_METRICS: tuple[str, ...] = ("vae_loss", "kl_loss", "g_loss", "d_loss", "lpips_loss", "flow_loss",
                                *(f"{term}_loss" for term in IMAGE_STAT_TERMS))


def has_vae_mode(step: Any) -> bool:
    """The step runs the VAE trainer (reconstruction and/or adversarial)."""
    return bool(step.train_vae or step.gan_training)


def touches_vae(step: Any) -> bool:
    """Any VAE mode or VAE modifier is on (train_vae, gan_training, train_spade, use_lpips): whether the VAE's
    reconstructions are worth looking at. Wider than `has_vae_mode` (which trainer runs and what it trains): a step
    that only switches on a modifier still works on the VAE's output, so it gets VAE EMA, reconstruction samples and
    reconstruction metrics."""
    return bool(step.train_vae or step.gan_training or step.train_spade or step.use_lpips)


def has_flow_mode(step: Any) -> bool:
    return bool(step.train_diff or step.train_diff_full)


def image_stat_terms(step: Any) -> list[str]:
    """The image-statistics terms the step adds to its reconstruction loss: those switched on, in a train_vae step
    (switched on through `defaults` in a step without train_vae, they have no effect there)."""
    return [t for t in IMAGE_STAT_TERMS if step.train_vae and getattr(step, f"train_{t}", False)]


def unused_image_stat_fields(step: Any) -> set[str]:
    """`train_<term>`/`lambda_<term>` of the terms the step does not use: they change nothing it trains, so they are
    left out of its step key (and steps written before the terms existed keep their keys)."""
    used = set(image_stat_terms(step))
    return {f"{prefix}_{t}" for t in IMAGE_STAT_TERMS if t not in used for prefix in ("train", "lambda")}


# Step fields only some steps train with (fluxflow/train/batch_step.py; the flow objective, fluxflow/train/trainer.py)
GAN_FIELDS = ("lambda_adv", "r1_gamma", "r1_interval", "adaptive_adv_weight")
KL_FIELDS = ("kl_beta", "kl_warmup_steps", "kl_free_bits")  # every VAE/GAN step: its encoder's KL term
RECONSTRUCTION_FIELDS = ("recon_l1_weight", "recon_mse_weight", "lambda_lpips")  # train_vae
FLOW_FIELDS = ("cfg_dropout", "uniform_t_share", "t_logit_mean", "t_logit_std", "t_shift", "t_shift_base_size",
               "loss_weighting", "min_snr_gamma")


def unused_fields(step: Any) -> dict[str, str]:
    """{field: why it changes nothing this step trains} for the loss and EMA fields the step's modes never read, and
    the weights of the image-statistics terms it does not add (unused_image_stat_fields keeps them out of the step
    key). A value written there was accepted without a word, and retrained the step when changed."""
    unused: dict[str, str] = {}

    def mark(fields, why: str) -> None:
        unused.update(dict.fromkeys(fields, why))

    if not step.gan_training:
        mark(GAN_FIELDS, "the step has no GAN (gan_training)")
    elif not (step.train_vae and "expander" in trained_components(step)):
        mark(["adaptive_adv_weight"], "it balances the reconstruction loss's gradient at the trained expander: it "
                                      "needs train_vae and the expander not frozen")
    if not has_vae_mode(step):
        mark(KL_FIELDS, "the step trains no VAE (train_vae, gan_training)")
    if not step.train_vae:
        mark(RECONSTRUCTION_FIELDS, "the step has no reconstruction loss (train_vae)")
    elif not step.use_lpips:
        mark(["lambda_lpips"], "the step has no LPIPS term (use_lpips)")
    if not has_flow_mode(step):
        mark(FLOW_FIELDS, "the step trains no flow model (train_diff, train_diff_full)")
    elif step.loss_weighting != "min_snr":
        mark(["min_snr_gamma"], "loss_weighting is not min_snr")
    if step.transition_on.mode != "loss_threshold":
        mark(["on_missed"], "it applies to a loss_threshold transition; this step runs its n_epochs")
    elif step.transition_on.max_epochs != step.n_epochs:  # its own bound: n_epochs is only max_epochs' default
        mark(["n_epochs"], "its loss_threshold transition ends it by transition_on.max_epochs")
    # The weight of a term the step does not add (its switch without train_vae: refused).
    for term in (t for t in IMAGE_STAT_TERMS if t not in image_stat_terms(step)):
        mark([f"lambda_{term}"], f"train_{term} is off" if step.train_vae else
             "the step has no reconstruction loss (train_vae)")
    if not step.lr_read:  # a changed lr changed the key: the step trained again, to the same weights
        mark(["lr"], f"every optimizer of the step sets its own lr ({', '.join(step.optimization.optimizers)})")
    if not ema_components(step, trained_components(step)):
        mark(["ema_decay"], "the step keeps no EMA (it trains no compressor, expander, flow model or text encoder)")
    return unused


def vae_loss_weights(step: Any) -> dict[str, float]:
    """{field: weight} of each loss term that reaches the step's compressor and expander: KL (any VAE mode), the
    reconstruction terms (train_vae: L1, MSE, LPIPS and image statistics where switched on), the adversarial term
    (gan_training). All 0: the VAE is updated by nothing (batch_step.py adds exactly these)."""
    weights = {"kl_beta": step.kl_beta} if has_vae_mode(step) else {}
    if step.train_vae:
        weights.update(recon_l1_weight=step.recon_l1_weight, recon_mse_weight=step.recon_mse_weight)
        if step.use_lpips:
            weights["lambda_lpips"] = step.lambda_lpips
        weights.update({f"lambda_{term}": getattr(step, f"lambda_{term}") for term in image_stat_terms(step)})
    if step.gan_training:
        weights["lambda_adv"] = step.lambda_adv
    return weights


def ema_components(step, trained: set[str]) -> set[str]:
    """EMA by the original tool's rule: VAE components when any VAE mode or modifier is on; flow components when they
    train. Only trained ones: a frozen component's EMA, updated towards its live weights, drifted during the step,
    and the step decodes with it (train_spade added the expander even when the step froze it)."""
    vae = {"compressor", "expander"} if touches_vae(step) else set()
    return trained & (vae | {"flow_processor", "text_encoder"})


def mode_trained_components(step: Any) -> set[str]:
    """Components the step's modes train, before `unfreeze` is applied."""
    trains = {"compressor": has_vae_mode(step), "expander": has_vae_mode(step), "discriminator": step.gan_training,
              "flow_processor": has_flow_mode(step), "text_encoder": step.train_diff_full}
    return {component for component, trained in trains.items() if trained}


def trainable_components(step: Any) -> set[str]:
    """Components that get a gradient from the step's losses: those its modes train, plus the text encoder of a flow
    step (the flow loss reaches it through the conditioning). `unfreeze` may only name these."""
    return mode_trained_components(step) | ({"text_encoder"} if has_flow_mode(step) else set())


def trained_components(step: Any) -> set[str]:
    """Components whose parameters this step updates: those of its modes plus its `unfreeze` list, less its
    `freeze` list."""
    added, frozen = set(getattr(step, "unfreeze", None) or ()), set(getattr(step, "freeze", None) or ())
    return (mode_trained_components(step) | added) - frozen


def expander_spade(step: Any, inherited: bool) -> bool:
    """Whether the expander decodes with SPADE after this step: as this step trains it (`train_spade`) where the step
    trains the expander, else as the step that last trained it did (`inherited`, carried in the checkpoint). Every
    decode (samples, evaluation, generation, the served model) follows it, not the decoding step's own train_spade:
    a flow step cannot set train_spade."""
    return bool(step.train_spade) if "expander" in trained_components(step) else bool(inherited)


def required_components(step: Any) -> set[str]:
    """Components that must exist for the step to run (trained or used frozen)."""
    # A flow step: latents come from the compressor, samples go through the expander, prompts through the text encoder.
    flow = {"compressor", "expander", "text_encoder", "flow_processor"} if has_flow_mode(step) else set()
    return mode_trained_components(step) | flow


def optimizer_groups(step: Any) -> set[str]:
    """Optimizer groups the step needs: one for each group with at least one trained component."""
    trained = trained_components(step)
    return {group for group, members in OPTIMIZER_GROUPS.items() if trained & set(members)}


def step_metrics(step: Any) -> list[str]:
    """Metric names the step logs, in the original tool's display order (VAE, KL, G, D, LPIPS, Flow).

    GAN-only steps log vae_loss as 0.0 (the original tool's table); `threshold_metrics` leaves it out.
    """
    metrics: list[str] = []
    if has_vae_mode(step):
        metrics += ["vae_loss", "kl_loss"]
    if step.gan_training:  # a frozen discriminator is only the generator's critic: no D loss to log
        metrics += ["g_loss", "d_loss"] if "discriminator" in trained_components(step) else ["g_loss"]
    if step.use_lpips and step.train_vae:
        metrics.append("lpips_loss")
    metrics += [f"{term}_loss" for term in image_stat_terms(step)]
    if has_flow_mode(step):
        metrics.append("flow_loss")
    return metrics


def threshold_metrics(step: Any) -> list[str]:
    """Metrics a loss_threshold transition may watch: those that actually vary in this step."""
    return [m for m in step_metrics(step) if not (m == "vae_loss" and not step.train_vae)]


# Labels of the validation summary, in its order; train_diff_full's "Flow+Text" replaces train_diff's "Flow".
MODE_LABELS: tuple[tuple[str, str], ...] = (("train_vae", "VAE"), ("gan_training", "GAN"), ("train_spade", "SPADE"),
                                            ("use_lpips", "LPIPS"), ("train_diff_full", "Flow+Text"))


def mode_labels(step: Any) -> list[str]:
    """Short labels for the validation summary: VAE, GAN, SPADE, LPIPS, Flow, Flow+Text."""
    flow = ["Flow"] if step.train_diff and not step.train_diff_full else []
    return [label for mode, label in MODE_LABELS if getattr(step, mode)] + flow
