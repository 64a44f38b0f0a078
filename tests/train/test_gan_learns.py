"""A discriminator that learns on real images (sklearn's handwritten digits, 32 px): after a VAE warm-up, the VAE+GAN
step's hinge D loss leaves 2.00 ± 0.02 and stays away, with the default discriminator optimizer.

Before the discriminator's AdamW defaulted to betas (0.5, 0.9), this setting (default model sizes, batch 32, D lr
5e-4) sat at 2.00 from about update 30: the second moment remembered each lazy R1 step's gradient for ~1,000 updates
(fluxflow/config/optim.py, GROUP_OPTIMIZER_PARAMS); R1 then penalised the patch logits' sum, not their mean."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers_tiny import one_torch_thread

from fluxflow.config import load_config
from fluxflow.train.trainer import build_trainer

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.slow  # ~1 min on one CPU thread: a default-size VAE trained for 210 updates


def digits(size: int = 32) -> torch.Tensor:
    """The 1,797 8×8 digits of sklearn (shipped with it, no download) as RGB images in [-1, 1]."""
    datasets = pytest.importorskip("sklearn.datasets")
    x = torch.tensor(datasets.load_digits().images, dtype=torch.float32)[:, None] / 16.0
    return (F.interpolate(x, size=size, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1) * 2 - 1).clamp(-1, 1)


def trainer(step: dict, state: dict | None):
    raw = {"data": {"img_size": 32, "channels": 3},
           "training": {"batch_size": 32, "workers": 0, "seed": 0, "device": "cpu", "precision": "fp32",
                        "pipeline": {"datasets": {"unused": {"type": "shapes", "size": 64}}, "steps": [step]}}}
    config = load_config(raw).config
    return build_trainer(config, config.resolved_steps()[0], state, torch.device("cpu"), max_epochs=1)


def test_the_discriminator_learns_on_digits_after_a_vae_warm_up(one_torch_thread):
    images, generator = digits(), torch.Generator().manual_seed(0)

    def batch() -> torch.Tensor:
        return images[torch.randint(0, len(images), (32,), generator=generator)]

    warm = trainer({"name": "warm", "n_epochs": 1, "train_vae": True, "grad_clip": 0}, None)
    for update in range(150):
        warm.train_batch(batch(), [""] * 32, update, update)
    state = {"models": {name: m.state_dict() for name, m in warm.models.items()},
             "ema": {name: e.state_dict() for name, e in warm.emas.items()}}

    gan = trainer({"name": "gan", "n_epochs": 1, "train_vae": True, "gan_training": True,
                   "optimization": {"optimizers": {"discriminator": {"type": "AdamW", "lr": 5e-4}}}}, state)
    d_loss = [float(gan.train_batch(batch(), [""] * 32, 1000 + u, u)["d_loss"]) for u in range(60)]
    windows = [sum(d_loss[i:i + 10]) / 10 for i in range(30, 60, 10)]  # updates 31-60, 10 at a time
    assert all(abs(w - 2.0) > 0.02 for w in windows), windows
