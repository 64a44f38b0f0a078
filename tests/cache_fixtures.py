"""A flow step's Trainer and data with or without its caches, for the cache tests (tiny sizes, CPU, fp32)."""
from __future__ import annotations

from pathlib import Path

import torch
from helpers_tiny import tiny_config

from fluxflow.data import make_loader
from fluxflow.models.latents import measure_latent_norm
from fluxflow.train.step_cache import attach_caches
from fluxflow.train.step_data import load_step_data
from fluxflow.train.trainer import build_trainer

CPU = torch.device("cpu")


def flow_setup(output: Path, step: dict, *, caches: bool, state: dict | None = None, said: list | None = None,
               epochs: range | None = None, **config_kwargs):
    """(trainer, data, config, step) of a one-step flow pipeline; `caches`: attach them as the runner does (with the
    latent rows of `epochs`; None: all rows)."""
    config = tiny_config(output, [dict({"name": "flow", "n_epochs": 1}, **step)], no_samples=True, **config_kwargs)
    resolved = config.step("flow")
    data = load_step_data(config, resolved, CPU)
    trainer = build_trainer(config, resolved, state, CPU, max_epochs=1)
    if caches:
        attach_caches(config, resolved, data, trainer, epochs,
                      say=said.append if said is not None else (lambda line: None))
    return trainer, data, config, resolved


def image_norm(trainer, data, config, step) -> dict[str, torch.Tensor]:
    """The latent normalisation measured on images (the same for every arm of a comparison)."""
    images = [x for x, _ in make_loader(data.train_set, step.batch_size, 0, config.training.seed)]
    return measure_latent_norm(trainer.ctx.latent_encoder, images)


def train_losses(trainer, data, config, step, n_batches: int) -> torch.Tensor:
    """flow_loss of the first `n_batches` batches of epoch 0, loaded and trained as the runner does."""
    losses = []
    loader = make_loader(data.batch_source, step.batch_size, 0, config.training.seed, 0, 0)
    for i, (inputs, captions) in enumerate(loader):
        if i == n_batches:
            break
        losses.append(trainer.train_batch(inputs, captions, global_step=i, update=i)["flow_loss"])
    return torch.stack(losses)


def weights(trainer) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v.detach().clone() for n, m in trainer.models.items() for k, v in m.state_dict().items()}


def assert_trains_the_same(output: Path, step: dict, n_batches: int = 4, **config_kwargs):
    """Train the step's first batches without and with its caches (same weights, data order and draws) and check
    that losses and weights agree; returns (live, cached) Trainers."""
    live, live_data, config, resolved = flow_setup(output / "live", step, caches=False, **config_kwargs)
    cached, cached_data, _, _ = flow_setup(output / "cached", step, caches=True, **config_kwargs)
    norm = image_norm(live, live_data, config, resolved)
    live.set_latent_norm(norm)
    cached.set_latent_norm(norm)
    want = train_losses(live, live_data, config, resolved, n_batches)
    got = train_losses(cached, cached_data, config, resolved, n_batches)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for name, value in weights(live).items():
        torch.testing.assert_close(weights(cached)[name], value, rtol=1e-5, atol=1e-7, msg=name)
    return live, cached
