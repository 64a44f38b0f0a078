"""Per-batch training steps (fluxflow/train/batch_step.py) on tiny real models: which components each training mode
updates, GAN-only gradient flow, loss going down on `shapes`, and non-finite losses skipping the update.

Models and optimizers are built the way the runner builds them (prepare_models, build_optimizers), starting from a
checkpoint that carries all five components, so "frozen" is tested against components that are really there.
"""
from __future__ import annotations

import math

import pytest
import torch
from helpers_tiny import changed_components, changed_tensors, one_torch_thread, shapes_batches, snapshot, step_context

from fluxflow.models.latents import measure_latent_norm, normalise_latents, posterior
from fluxflow.losses import adaptive_weight, rectified_flow_loss
from fluxflow.models import COMPONENTS, build_component, tokenize
from fluxflow.config.modes import step_metrics
from fluxflow.train.batch_step import encode_text, train_flow_batch, train_vae_batch

__all__ = ["one_torch_thread"]  # autouse fixture: tiny steps run ~20x faster on a busy CPU with one thread

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VAE, VAE_GAN = {"compressor", "expander"}, {"compressor", "expander", "discriminator"}

# mode name -> (step fields, components that must change after one batch)
MODES = {
    "train_vae": ({"train_vae": True}, VAE),
    "gan_only": ({"train_vae": False, "gan_training": True}, VAE_GAN),
    "vae_gan": ({"train_vae": True, "gan_training": True}, VAE_GAN),
    "train_spade": ({"train_vae": True, "train_spade": True}, VAE),
    "train_diff": ({"train_diff": True}, {"flow_processor"}),
    "train_diff_full": ({"train_diff_full": True}, {"flow_processor", "text_encoder"}),
}


def all_components_state(seed: int = 1) -> dict:
    """An input checkpoint that carries every component, as a later pipeline step receives it."""
    from helpers_tiny import single_step_config

    config, _ = single_step_config({"train_vae": True})
    torch.manual_seed(seed)
    return {"models": {name: build_component(name, config.model, config.data.channels).state_dict()
                       for name in COMPONENTS}}


def run_batch(ctx, config, images: torch.Tensor, captions: list[str], global_step: int = 0) -> dict:
    """One batch, dispatched as the runner does: the VAE step for VAE/GAN modes, the flow step for flow modes."""
    step, metrics = ctx.step, {}
    if step.train_vae or step.gan_training:
        metrics.update(train_vae_batch(ctx, images, global_step))
    if step.train_diff or step.train_diff_full:
        if ctx.latent_norm is None:
            ctx.latent_norm = measure_latent_norm(ctx.latent_encoder, images)
        ids, mask = tokenize(captions, config.model.text_max_len)
        latents = normalise_latents(posterior(ctx.latent_encoder, images)[0], ctx.latent_norm)
        metrics.update(train_flow_batch(ctx, latents, encode_text(ctx, ids, mask)))
    return metrics


@pytest.fixture(scope="module")
def batch():
    from helpers_tiny import single_step_config

    config, _ = single_step_config({"train_vae": True})
    return shapes_batches(config, 1)[0]


@pytest.mark.parametrize("mode", list(MODES))
def test_each_mode_updates_exactly_its_components(mode, batch):
    fields, expected = MODES[mode]
    ctx, config = step_context(fields, state=all_components_state())
    assert set(ctx.models) == set(COMPONENTS)
    before = snapshot(ctx.models)

    metrics = run_batch(ctx, config, *batch)

    assert changed_components(before, ctx.models) == expected
    for name, module in ctx.models.items():  # frozen: no grad and in eval mode (no dropout/norm updates)
        trains = name in expected
        assert module.training == trains, name
        assert all(p.requires_grad == trains for p in module.parameters()), name
    for name in step_metrics(ctx.step):  # the original tool's metric names, as 0-dim tensors (read at log time)
        assert metrics[name].dim() == 0 and torch.isfinite(metrics[name]), name
    assert float(metrics["skipped_updates"]) == 0.0


def test_spade_parameters_train_only_in_spade_steps(batch):
    spade_changes = {}
    for spade in (False, True):
        ctx, config = step_context({"train_vae": True, "train_spade": spade}, state=all_components_state())
        before = snapshot(ctx.models)
        run_batch(ctx, config, *batch)
        spade_changes[spade] = {n for n in changed_tensors(before, ctx.models) if n.startswith("expander.spade.")}
    assert spade_changes[False] == set()
    # γ and β of every modulation get a gradient at once (they start at zero, their input does not)
    n_modulations = len(ctx.models["expander"].spade)
    for i in range(n_modulations):
        assert {f"expander.spade.{i}.gamma.weight", f"expander.spade.{i}.beta.weight"} <= spade_changes[True]


def test_gan_only_mode_trains_the_encoder_through_the_generator_loss(batch):
    """With no KL (kl_beta 0) and no weight decay, only the G loss can move the encoder: the latent is not detached."""
    no_decay = {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.0}
    ctx, config = step_context({"train_vae": False, "gan_training": True, "kl_beta": 0.0,
                                "optimization": {"optimizers": {"vae": no_decay, "discriminator": no_decay}}})
    before = snapshot(ctx.models)
    metrics = run_batch(ctx, config, *batch)
    assert "compressor" in changed_components(before, ctx.models)
    assert float(metrics["vae_loss"]) == 0.0  # the original tool's table: VAE (0.0) in GAN-only mode


def test_vae_loss_goes_down_over_50_steps_on_shapes():
    ctx, config = step_context({"train_vae": True, "optimization": {"optimizers": {"vae": {"lr": 3e-3}}}},
                               dataset_size=64)
    losses = [float(train_vae_batch(ctx, images, i)["vae_loss"]) for i, (images, _) in
              enumerate(shapes_batches(config, 50))]
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.8 * first, (first, last)


def _fixed_flow_loss(ctx, config, images: torch.Tensor, captions: list[str]) -> float:
    """The flow loss of one batch averaged over 32 fixed (t, noise) draws: low variance, same draws every call."""
    ids, mask = tokenize(captions, config.model.text_max_len)
    with torch.no_grad():
        tokens, pooled = ctx.models["text_encoder"](ids, mask)
        x0 = normalise_latents(posterior(ctx.models["compressor"], images)[0], ctx.latent_norm).repeat(32, 1, 1, 1)
        generator = torch.Generator().manual_seed(123)
        return float(rectified_flow_loss(ctx.models["flow_processor"], x0, tokens.repeat(32, 1, 1), mask.repeat(32, 1),
                                         pooled.repeat(32, 1), None, generator))


def test_flow_loss_goes_down_over_50_steps_on_shapes():
    """The per-batch flow loss is dominated by the random t of each sample (the mean of the first 5 and the last 5
    batches overlap for some seeds), so progress is measured on one batch with fixed draws before and after."""
    ctx, config = step_context({"train_diff": True, "optimization": {"optimizers": {"flow": {"lr": 3e-3}}}},
                               dataset_size=64)
    batches = shapes_batches(config, 50)
    ctx.latent_norm = measure_latent_norm(ctx.models["compressor"], batches[0][0])
    before = _fixed_flow_loss(ctx, config, *batches[0])
    losses = [float(run_batch(ctx, config, images, captions)["flow_loss"]) for images, captions in batches]
    after = _fixed_flow_loss(ctx, config, *batches[0])
    assert all(math.isfinite(v) for v in losses)
    assert after < 0.97 * before, (before, after)


@pytest.mark.parametrize("mode", ["train_vae", "vae_gan", "train_diff_full"])
def test_nan_loss_skips_the_update_and_is_counted(mode, batch):
    fields, _ = MODES[mode]
    ctx, config = step_context(fields, state=all_components_state())
    images, captions = batch
    if ctx.step.train_diff_full:  # measured on clean images, as the runner does before the first flow batch
        ctx.latent_norm = measure_latent_norm(ctx.models["compressor"], images)
    poisoned = images.clone()
    poisoned[0, 0, 0, 0] = float("nan")
    before = snapshot(ctx.models)

    metrics = run_batch(ctx, config, poisoned, captions)

    assert changed_components(before, ctx.models) == set(), "a non-finite loss must not move any weight"
    expected_skips = 2.0 if ctx.step.gan_training else 1.0  # the generator update and the discriminator update
    assert float(metrics["skipped_updates"]) == expected_skips

    # The skipped update left the optimizer state clean: the next finite batch trains and everything stays finite.
    metrics = run_batch(ctx, config, images, captions, global_step=1)
    assert float(metrics["skipped_updates"]) == 0.0
    assert changed_components(before, ctx.models) == MODES[mode][1]
    for name, module in ctx.models.items():
        assert all(torch.isfinite(p).all() for p in module.parameters()), name
    for opt in ctx.optimizers.values():
        for state in opt.state.values():
            assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))


SGD_BOTH = {"optimization": {"optimizers": {"flow": {"type": "SGD", "lr": 0.1},
                                            "text_encoder": {"type": "SGD", "lr": 0.1}}}}


def flow_full_context(batch, grad_clip: float = 1.0):
    ctx, config = step_context({"train_diff_full": True, "grad_clip": grad_clip, **SGD_BOTH},
                               state=all_components_state())
    ctx.latent_norm = measure_latent_norm(ctx.models["compressor"], batch[0])
    return ctx, config


def set_text_encoder_gradient(ctx, value: float) -> None:
    """Replace the text encoder's gradient in the backward by `value` everywhere (NaN poisons only it; 1.0 makes it
    dominate the global norm, as the flow model's zero-initialised conditioning passes it almost none at first)."""
    for p in ctx.models["text_encoder"].parameters():
        p.register_hook(lambda grad: torch.full_like(grad, value))


def test_train_diff_full_skips_the_whole_update_when_only_the_text_encoders_gradient_is_not_finite(batch):
    ctx, config = flow_full_context(batch)
    set_text_encoder_gradient(ctx, float("nan"))
    before = snapshot(ctx.models)
    metrics = run_batch(ctx, config, *batch)
    assert changed_components(before, ctx.models) == set()  # the flow model does not step on its own either
    assert float(metrics["skipped_updates"]) == 1.0


def test_train_diff_full_clips_flow_and_text_encoder_by_one_global_norm(batch):
    ctx, config = flow_full_context(batch, grad_clip=1.0)
    set_text_encoder_gradient(ctx, 1.0)
    before = {n: [p.detach().clone() for p in ctx.models[n].parameters()] for n in ("flow_processor", "text_encoder")}
    metrics = run_batch(ctx, config, *batch)
    moved = {n: torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach() - b) for p, b in
                                                      zip(ctx.models[n].parameters(), before[n])]))
             for n in before}
    norms = {n: float(metrics[f"grad_norm_{g}"]) for n, g in (("flow_processor", "flow"),
                                                            ("text_encoder", "text_encoder"))}
    total = math.hypot(*norms.values())
    assert norms["text_encoder"] > 10 * norms["flow_processor"] > 0
    # SGD without momentum: each group moves lr x its gradient x one shared factor max_norm / global norm
    for name in moved:
        assert math.isclose(float(moved[name]), 0.1 * norms[name] / total, rel_tol=1e-3), name
    assert float(math.hypot(*(float(m) for m in moved.values()))) <= 0.1 * (1 + 1e-3)


class PerceptualStandIn(torch.nn.Module):
    """A differentiable image distance in LPIPS's place (the real one needs the AlexNet file): only what the step does
    with its value matters here."""

    def forward(self, x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return (x_hat - x).square().mean(dim=(1, 2, 3)) * 10.0


def test_the_adaptive_gan_weight_balances_against_the_whole_reconstruction_loss_lpips_included(batch, monkeypatch):
    import fluxflow.train.batch_step as batch_step

    seen = []

    def spy(rec_loss, g_loss, last_layer_weight, **kwargs):
        seen.append(rec_loss.detach())
        return adaptive_weight(rec_loss, g_loss, last_layer_weight, **kwargs)

    monkeypatch.setattr(batch_step, "adaptive_weight", spy)
    ctx, config = step_context({"train_vae": True, "gan_training": True, "adaptive_adv_weight": True,
                                "lambda_lpips": 0.5})
    ctx.lpips = PerceptualStandIn()
    metrics = train_vae_batch(ctx, batch[0], 0)
    expected = metrics["vae_loss"] + 0.5 * metrics["lpips_loss"]
    assert float(metrics["lpips_loss"]) > 0 and torch.allclose(seen[0], expected)


def test_a_vae_step_with_the_image_statistics_terms_logs_them_and_trains_on_them(batch):
    terms = ("colorstats", "histogram", "contrast", "coarseness")
    on = {f"train_{t}": True for t in terms}
    ctx, _ = step_context({"train_vae": True, **on})
    plain, _ = step_context({"train_vae": True})
    before = snapshot(ctx.models)
    metrics = train_vae_batch(ctx, batch[0], 0)
    assert all(float(metrics[f"{t}_loss"]) > 0 for t in terms)
    assert [m for m in step_metrics(ctx.step) if m.split("_")[0] in terms] == [f"{t}_loss" for t in terms]
    train_vae_batch(plain, batch[0], 0)  # the same weights and draws without the terms: another update
    assert changed_components(before, ctx.models) == VAE
    assert not torch.equal(next(ctx.models["expander"].parameters()), next(plain.models["expander"].parameters()))
