"""The flow objective's knobs per step (fluxflow/losses/flow.py): logit-normal mean and std, the SD3 shift (fixed or
resolution-dependent), the uniform share, min-SNR loss weighting. Statistical checks on many draws, then each option
trains a tiny flow step."""
from __future__ import annotations

import json
import math

import pytest
import torch
from helpers_tiny import one_torch_thread, single_step_config, step_keys, tiny_config  # noqa: F401

from fluxflow.config import ConfigError
from fluxflow.config.steps import SHIFT_RANGE
from fluxflow.losses.flow import FlowObjective, draw_timesteps, min_snr_weight, rectified_flow_loss
from fluxflow.models.flow_sampler import sigma_schedule
from fluxflow.train.trainer import flow_objective

N = 200_000  # draws per check: the standard error of a mean of N(0, 1) draws is 0.0022


def draws(objective: FlowObjective, seed: int = 0) -> torch.Tensor:
    return draw_timesteps(N, torch.device("cpu"), torch.Generator().manual_seed(seed), objective)


def test_the_default_objective_draws_exactly_the_standard_logit_normal():
    expected = torch.sigmoid(torch.randn(N, generator=torch.Generator().manual_seed(0)))
    assert torch.equal(draws(FlowObjective()), expected)


@pytest.mark.parametrize("mean,std", [(0.0, 1.0), (0.5, 1.0), (-1.0, 0.6), (0.0, 2.0)])
def test_logit_mean_and_std_set_the_moments_of_logit_t(mean, std):
    z = torch.logit(draws(FlowObjective(logit_mean=mean, logit_std=std)).double())
    assert abs(float(z.mean()) - mean) < 0.01
    assert abs(float(z.std()) - std) < 0.01 * std


def test_a_positive_logit_mean_moves_t_towards_noise():
    assert float(draws(FlowObjective(logit_mean=1.0)).median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.005)


@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_the_shift_maps_each_draw_as_sd3_does(shift):
    plain, shifted = draws(FlowObjective()), draws(FlowObjective(shift=shift))
    torch.testing.assert_close(shifted, shift * plain / (1 + (shift - 1) * plain))
    # The median of the logit-normal, 0.5, goes to s / (1 + s): 0.75 for s = 3, moving weight towards noise.
    assert float(shifted.median()) == pytest.approx(shift / (1 + shift), abs=0.005)


def test_the_resolution_dependent_shift_scales_with_the_image_size():
    _, step = single_step_config({"train_diff_full": True, "t_shift": 1.5, "t_shift_base_size": 16})
    assert flow_objective(step, 16).shift == 1.5
    assert flow_objective(step, 32).shift == 3.0  # twice the side: sqrt(4 × the pixels)
    t = draws(flow_objective(step, 32))
    assert float(t.median()) == pytest.approx(0.75, abs=0.005)
    _, fixed = single_step_config({"train_diff_full": True, "t_shift": 1.5})
    assert flow_objective(fixed, 32).shift == 1.5


def test_the_uniform_share_is_drawn_before_the_shift():
    t = draws(FlowObjective(uniform_share=1.0, shift=3.0))
    # Uniform u shifted: P(t <= x) = P(u <= x / (s − (s − 1)·x)); at x = 0.5 that is 0.25.
    assert float((t <= 0.5).double().mean()) == pytest.approx(0.25, abs=0.005)


def test_min_snr_weight_is_min_snr_gamma_on_this_paths_velocity_error():
    t = torch.tensor([0.5, 0.05, 0.9, 0.0, 1.0], dtype=torch.float64)
    # SNR = ((1 − t)/t)²: 1, 361 (clamped to γ = 5), 1/81, inf (clamped), 0; times t².
    # Was the VP-diffusion v form min(SNR, γ)/(SNR + 1): 0.5 at t = 0.5, twice this path's weight.
    assert min_snr_weight(t, 5.0).tolist() == pytest.approx([0.25, 5 * 0.05**2, 0.01, 0.0, 0.0])
    assert min_snr_weight(t, 0.5)[0] == pytest.approx(0.125)  # SNR 1 above γ = 0.5: clamped


@pytest.mark.parametrize("t", [0.05, 0.2, 0.31, 0.5, 0.7, 0.95])
def test_the_min_snr_weighted_velocity_loss_is_min_snr_gamma_s_x0_and_eps_losses(t):
    """Hang et al. 2023: min(SNR, γ)·‖x̂0 − x0‖², or min(SNR, γ)/SNR·‖ε̂ − ε‖²; for x_t = (1 − t)·x0 + t·ε and a
    velocity prediction v̂ of v = ε − x0, x̂0 = x_t − t·v̂ and ε̂ = x_t + (1 − t)·v̂."""
    gen = torch.Generator().manual_seed(0)
    x0, eps, v_hat = (torch.randn(3, 8, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    x_t = (1 - t) * x0 + t * eps
    snr, gamma = ((1 - t) / t) ** 2, 5.0
    weight = min_snr_weight(torch.tensor(t, dtype=torch.float64), gamma)
    weighted_v = float(weight * (v_hat - (eps - x0)).square().sum())
    x0_loss = float((x_t - t * v_hat - x0).square().sum())
    eps_loss = float((x_t + (1 - t) * v_hat - eps).square().sum())
    assert weighted_v == pytest.approx(min(snr, gamma) * x0_loss, rel=1e-9)
    assert weighted_v == pytest.approx(min(snr, gamma) / snr * eps_loss, rel=1e-9)


def test_min_snr_weighting_weights_each_sample_error():
    x0 = torch.randn(64, 2, 4, 4)
    zero = lambda *a: torch.zeros_like(x0)  # noqa: E731 - predicts v = 0: the error is the whole velocity
    weighted = rectified_flow_loss(zero, x0, None, None, None, None, torch.Generator().manual_seed(1),
                                   FlowObjective(weighting="min_snr", min_snr_gamma=2.0))
    gen = torch.Generator().manual_seed(1)
    t = torch.sigmoid(torch.randn(64, generator=gen))
    noise = torch.randn(x0.shape, generator=gen)
    per_sample = (noise - x0).square().mean(dim=(1, 2, 3))
    torch.testing.assert_close(weighted, (min_snr_weight(t, 2.0) * per_sample).mean())
    plain = rectified_flow_loss(zero, x0, None, None, None, None, torch.Generator().manual_seed(1))
    torch.testing.assert_close(plain, per_sample.mean())


@pytest.mark.parametrize("field,value,message", [
    ("t_logit_std", 0, "Input should be greater than 0"),
    ("loss_weighting", "snr", "Input should be 'none' or 'min_snr'"),
    ("t_shift_base_size", 0, "Input should be greater than or equal to 1"),
    # Accepted before (any t_shift > 0): the sampler's schedule began at inf, training logged nan and the evaluation
    # stopped with a traceback ('linalg.eigh: The algorithm failed to converge').
    ("t_shift", 1e-8, "must be between 0.001 and 1000"),
    ("t_shift", 1e39, "must be between 0.001 and 1000"),
    ("t_shift", 0, "must be between 0.001 and 1000"),
    # Each field in range, their product not: 1 × 16 px / 10**9 = 1.6e-08.
    ("t_shift_base_size", 10**9, "scales t_shift 1 to 1.6e-08 at img_size 16"),
])
def test_invalid_knobs_are_reported_with_their_field(tmp_path, field, value, message):
    with pytest.raises(ConfigError) as raised:
        tiny_config(tmp_path, [{"name": "flow", "n_epochs": 1, "train_diff_full": True, field: value}])
    assert [i.path for i in raised.value.issues] == [f"training.pipeline.steps[0].{field}"]
    assert message in raised.value.issues[0].message


@pytest.mark.parametrize("shift", SHIFT_RANGE)
def test_the_sampler_schedule_holds_at_the_bounds_of_the_shift(shift):
    # Why the bounds are where they are (fluxflow/config/steps.py SHIFT_RANGE): the float32 schedule of 1,000 steps
    # still starts at 1, ends at 0 and has no two steps at one time.
    times = sigma_schedule(1000, shift)
    assert times.isfinite().all() and times[0] == pytest.approx(1.0, abs=1e-4) and times[-1] == 0.0
    assert (times[:-1] > times[1:]).all()


OPTIONS = {"default": {}, "logit_normal": {"t_logit_mean": 0.5, "t_logit_std": 1.5},
           "shift": {"t_shift": 3.0}, "resolution_shift": {"t_shift_base_size": 8},
           "uniform": {"uniform_t_share": 0.5}, "min_snr": {"loss_weighting": "min_snr", "min_snr_gamma": 1.0}}


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_trains_a_flow_step_and_has_a_step_key_of_its_own(tmp_path, option, one_torch_thread):  # noqa: F811
    from fluxflow.train.pipeline import run_pipeline
    from fluxflow.output_layout import metrics_file

    step = {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff_full": True, **OPTIONS[option]}
    config = tiny_config(tmp_path, [step], no_samples=True, dataset_size=12)
    [(ref, result)] = run_pipeline(config)
    assert result.trained and result.epochs_done == 1
    losses = [json.loads(line)["metrics"].get("flow_loss") for line in metrics_file(tmp_path, "flow").open()]
    assert [loss for loss in losses if loss is not None] and all(math.isfinite(x) for x in losses if x is not None)
    without = dict(step, **{k: None for k in OPTIONS[option]})  # None: inherit the default
    default_key = step_keys(tiny_config(tmp_path, [without], no_samples=True, dataset_size=12))["flow"]
    assert (ref.step_key == default_key) == (option == "default")


def test_steps_at_the_default_knobs_keep_the_keys_they_had_before_the_knobs_existed(tmp_path):
    """Measured on main (2f53829) before the seed, the objective's knobs and img_size were step fields: finished steps
    at the defaults (data.img_size 32) are reused."""
    steps = [{"name": "warm", "n_epochs": 1, "train_vae": True},
             {"name": "flow", "n_epochs": 1, "train_diff_full": True}]
    assert step_keys(tiny_config("out", steps, data={"img_size": 32, "channels": 3})) == {
        "warm": "417abcc4d840266f", "flow": "7592289705a73713"}


# What each option, set in a step, does to the draws the step's trainer makes (docs/CONFIG.md): the statistic and its
# value under that option; the trainer is built as the step runner builds it (build_trainer), at the tiny configs'
# 16 px. Under the default objective each statistic is far from the value checked (0, 1, 0.5, 0.5, 0.014). A step's
# uniform share defaults to 0.1: the logit-normal's moments are checked with it at 0; the medians hold with it (the
# uniform draws and the standard logit-normal share the median 0.5, which the shift maps).
def _logit(t: torch.Tensor) -> torch.Tensor:
    return torch.logit(t.double())


STEP_DRAWS = {
    "logit_normal": (lambda t: float(_logit(t).mean()), 0.5),
    "logit_normal_std": (lambda t: float(_logit(t).std()), 1.5),
    "shift": (lambda t: float(t.median()), 0.75),  # s / (1 + s), s = 3
    "resolution_shift": (lambda t: float(t.median()), 2 / 3),  # s = 1 × 16 px / 8 px = 2
    # P(t ≤ 0.1): half uniform (0.1) and half logit-normal (Φ(logit 0.1) = 0.0140): 0.0570
    "uniform": (lambda t: float((t <= 0.1).double().mean()), 0.5 * 0.1 + 0.5 * 0.0140),
}


@pytest.mark.parametrize("check", list(STEP_DRAWS))
def test_a_steps_knobs_reach_the_timesteps_its_trainer_draws(tmp_path, check):
    from fluxflow.train.trainer import build_trainer

    option = "logit_normal" if check == "logit_normal_std" else check
    step = {"name": "flow", "n_epochs": 1, "train_diff_full": True, **OPTIONS[option]}
    if option == "logit_normal":
        step["uniform_t_share"] = 0.0
    config = tiny_config(tmp_path, [step], no_samples=True)
    trainer = build_trainer(config, config.resolved_steps()[0], None, torch.device("cpu"), max_epochs=1)
    statistic, expected = STEP_DRAWS[check]
    assert statistic(draws(trainer.ctx.flow_objective)) == pytest.approx(expected, abs=0.01)


def test_a_steps_loss_weighting_reaches_its_trainer(tmp_path):
    from fluxflow.train.trainer import build_trainer

    step = {"name": "flow", "n_epochs": 1, "train_diff_full": True, **OPTIONS["min_snr"]}
    config = tiny_config(tmp_path, [step], no_samples=True)
    objective = build_trainer(config, config.resolved_steps()[0], None, torch.device("cpu"), max_epochs=1)\
        .ctx.flow_objective
    assert (objective.weighting, objective.min_snr_gamma) == ("min_snr", 1.0)
