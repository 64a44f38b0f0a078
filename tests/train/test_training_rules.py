"""Rules of training across steps and ranks: a step's own EMA decay and KL warm-up, flow latents from the VAE weights
that decode them, per-rank random draws, timesteps near t = 1, and a latent normalisation measured on many images."""
from __future__ import annotations

import pytest
import torch
from helpers_tiny import load_weights, one_torch_thread, tiny_config

from fluxflow.losses.flow import FlowObjective, draw_timesteps
from fluxflow.models.latents import measure_latent_norm
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VAE = {"n_epochs": 1, "max_steps": 2, "train_vae": True}


def test_a_later_steps_ema_decay_is_the_one_used_and_a_resume_keeps_the_saved_one(tmp_path):
    from fluxflow.train.trainer import build_trainer

    config = tiny_config(tmp_path, [{"name": "a", "ema_decay": 0.9, **VAE}, {"name": "b", "ema_decay": 0.5, **VAE}],
                         no_samples=True)
    first, second = run_pipeline(config)
    assert load_weights(first.ref.uri)["ema"]["compressor"]["decay"] == 0.9
    state = load_weights(second.ref.uri)
    assert state["ema"]["compressor"]["decay"] == 0.5

    state["ema"]["compressor"]["decay"] = 0.7  # stands for step b's own latest.pt, saved with its decay
    step_b = config.step("b")
    resumed = build_trainer(config, step_b, state, torch.device("cpu"), max_epochs=1, resuming=True)
    from_parent = build_trainer(config, step_b, state, torch.device("cpu"), max_epochs=1, resuming=False)
    assert resumed.emas["compressor"].decay == 0.7
    assert from_parent.emas["compressor"].decay == 0.5


def test_kl_warmup_counts_from_the_start_of_the_step_that_declares_it(tmp_path, monkeypatch):
    import fluxflow.train.batch_step as batch_step

    seen: list[int] = []
    real = batch_step.kl_weight

    def recording(update, beta, warmup):
        seen.append(update)
        return real(update, beta, warmup)

    monkeypatch.setattr(batch_step, "kl_weight", recording)
    config = tiny_config(tmp_path, [{"name": "a", **VAE}, {"name": "b", "kl_warmup_steps": 4, **VAE}],
                         no_samples=True)
    run_pipeline(config)
    assert seen == [0, 1, 0, 1]  # step b's first batch has KL weight 0, though the pipeline is at global step 2


def test_flow_latents_come_from_the_vae_weights_that_decode_the_samples(tmp_path):
    from fluxflow.train.trainer import build_trainer

    config = tiny_config(tmp_path, [{"name": "vae", **VAE}, {"name": "flow", "n_epochs": 1, "max_steps": 2,
                                                            "train_diff": True}], no_samples=True)
    vae, _ = run_pipeline(config)
    state = load_weights(vae.ref.uri)
    trainer = build_trainer(config, config.step("flow"), state, torch.device("cpu"), max_epochs=1)
    decoding = trainer.sampling_models()
    assert trainer.ctx.latent_encoder is decoding["compressor"]  # EMA compressor, as the EMA expander decodes
    assert trainer.ctx.latent_encoder is not trainer.models["compressor"]
    raw, ema = trainer.models["compressor"].state_dict(), decoding["compressor"].state_dict()
    assert any(not torch.equal(raw[k], ema[k]) for k in raw)  # they are different weights


def test_two_ranks_draw_different_noise_for_the_same_batch(monkeypatch):
    from fluxflow.runtime import distributed
    from fluxflow.train.trainer import batch_seed

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    draws = []
    for rank in (0, 1):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        draws.append(torch.randn(8, generator=torch.Generator().manual_seed(batch_seed(0, 5))))
    assert not torch.equal(draws[0], draws[1])
    monkeypatch.setattr(distributed, "world_size", lambda: 1)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    assert batch_seed(0, 5) == 5  # one process: the seeds single-process runs always used


def test_timesteps_near_one_are_drawn_with_the_uniform_share():
    generator = torch.Generator().manual_seed(0)
    with_share = draw_timesteps(200_000, torch.device("cpu"), generator, FlowObjective(uniform_share=0.1))
    logit_normal = draw_timesteps(200_000, torch.device("cpu"), generator, FlowObjective(uniform_share=0.0))
    near_one = lambda t: float((t > 0.98).float().mean())  # noqa: E731
    assert near_one(logit_normal) < 2e-4
    assert 0.0015 < near_one(with_share) < 0.0025  # ≈ 0.1 × 0.02
    assert 0.0 < float(with_share.min()) and float(with_share.max()) < 1.0


def test_latent_normalisation_over_several_batches_equals_the_statistics_of_all_their_images():
    encoder = torch.nn.Conv2d(3, 8, 3, padding=1)
    with_logvar = lambda x: (encoder(x), torch.zeros(()))  # noqa: E731 - (mean, logvar) as a compressor
    batches = [torch.randn(4, 3, 8, 8) * (i + 1) for i in range(5)]
    norm = measure_latent_norm(with_logvar, batches)
    with torch.no_grad():
        means = torch.cat([encoder(b) for b in batches])
    assert torch.allclose(norm["shift"], means.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(norm["scale"], means.std(dim=(0, 2, 3)), rtol=1e-4)
