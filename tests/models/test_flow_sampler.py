"""Euler sampler: σ grid, oracle velocities recover the data, CFG combination, one batched forward per step."""
from types import SimpleNamespace

import pytest
import torch

from fluxflow.models import build_component, sample_flow, sigma_schedule, tokenize


class Oracle(torch.nn.Module):
    """Exact velocity E[noise − x0 | x_t] for a known data distribution; records every call."""

    def __init__(self, velocity):
        super().__init__()
        self.velocity, self.calls = velocity, []

    def forward(self, x_t, t, tokens, mask, pooled, drop=None):
        self.calls.append((x_t.shape[0], t.clone(), None if drop is None else drop.clone()))
        return self.velocity(x_t, t.view(-1, *[1] * (x_t.dim() - 1)), drop)


def text(b):
    return torch.zeros(b, 3, 2), torch.ones(b, 3, dtype=torch.bool), torch.zeros(b, 2)


def test_sigma_schedule_uniform_and_shifted():
    torch.testing.assert_close(sigma_schedule(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    shifted = sigma_schedule(4, shift=3.0)
    torch.testing.assert_close(shifted[[0, -1]], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(shifted[2], torch.tensor(0.75))  # 3·0.5 / (1 + 2·0.5)
    assert (shifted[1:-1] > sigma_schedule(4)[1:-1]).all()  # more steps spent at high noise


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_dirac_data_is_recovered_exactly_from_oracle_velocity(shift, guidance):
    x_star = torch.randn(1, 4, 8, 8)
    oracle = Oracle(lambda x_t, t, drop: (x_t - x_star) / t)  # straight line from noise to x*
    out = sample_flow(oracle, (3, 4, 8, 8), *text(3), steps=7, guidance=guidance, shift=shift,
                      generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, x_star.expand(3, -1, -1, -1), atol=1e-5, rtol=1e-5)
    assert len(oracle.calls) == 7
    assert all(t.max() <= 1.0 and t.min() > 0.0 for _, t, _ in oracle.calls)  # never evaluated at t = 0


def test_gaussian_data_distribution_is_recovered_from_oracle_velocity():
    mu, s = 1.5, 0.5

    def velocity(x_t, t, drop):  # posterior mean of x0 given x_t for x0 ~ N(mu, s²)
        a = 1 - t
        x0_hat = mu + a * s**2 / (a**2 * s**2 + t**2) * (x_t - a * mu)
        return (x_t - x0_hat) / t

    out = sample_flow(Oracle(velocity), (20000, 1, 1, 1), *text(20000), steps=100,
                      generator=torch.Generator().manual_seed(0))
    assert abs(out.mean().item() - mu) < 0.02
    assert abs(out.std().item() - s) < 0.02


def test_guidance_combines_cond_and_uncond_in_one_batched_forward():
    a, b, g = 2.0, -1.0, 3.0  # v_cond = a, v_uncond = b everywhere
    oracle = Oracle(lambda x_t, t, drop: torch.where(drop.view(-1, 1, 1, 1), b, a).expand_as(x_t))
    noise = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    out = sample_flow(oracle, noise.shape, *text(2), steps=1, guidance=g, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, noise - (b + g * (a - b)))  # one Euler step of dt = −1
    (rows, _, drop), = oracle.calls
    assert rows == 4 and drop.tolist() == [False, False, True, True]


def test_guidance_one_runs_only_the_conditional_branch():
    oracle = Oracle(lambda x_t, t, drop: torch.zeros_like(x_t))
    sample_flow(oracle, (2, 1, 2, 2), *text(2), steps=3, guidance=1.0)
    assert [(rows, drop) for rows, _, drop in oracle.calls] == [(2, None)] * 3


def test_sampling_is_reproducible_under_a_seed_with_the_real_model():
    cfg = SimpleNamespace(latent_channels=4, feature_maps_dim=32, flow_depth=1, flow_heads=2, patch_size=2,
                          text_embedding_dim=16, text_max_len=16, text_encoder_depth=1)
    flow = build_component("flow_processor", cfg, 3)
    enc = build_component("text_encoder", cfg, 3)
    ids, mask = tokenize(["red", "blue"], 16)
    tokens, pooled = enc(ids, mask)
    run = lambda: sample_flow(flow, (2, 4, 8, 8), tokens, mask, pooled, steps=3, guidance=2.0,  # noqa: E731
                              shift=2.0, generator=torch.Generator().manual_seed(5))
    first = run()
    assert first.shape == (2, 4, 8, 8) and torch.isfinite(first).all() and not first.requires_grad
    torch.testing.assert_close(run(), first)
