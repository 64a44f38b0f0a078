"""Tiny pipelines end to end with the caches on by default: VAE, then two flow branches on its frozen VAE (the first
builds the latent and text caches, the second reuses the latent cache, and both train); and a flow step stopped
mid-epoch that resumes from its caches exactly."""
from __future__ import annotations

import contextlib
import functools
import io
import math

import pytest
import torch
from helpers_tiny import load_weights, one_torch_thread, tiny_config
from test_runner_resume import PROCESS_SEED, StopAt, assert_same_tensors, run_captured

from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


def test_vae_then_two_flow_branches_build_the_caches_once_and_train_from_them(tmp_path, capsys):
    steps = [{"name": "vae", "n_epochs": 1, "max_steps": 2, "train_vae": True},
             {"name": "flow", "n_epochs": 2, "max_steps": 3, "train_diff": True},
             {"name": "flow_full", "after": "vae", "n_epochs": 1, "max_steps": 3, "train_diff_full": True}]
    outcomes = run_pipeline(tiny_config(tmp_path, steps, no_samples=True))
    out = capsys.readouterr().out

    assert [o.result.step_name for o in outcomes] == ["vae", "flow", "flow_full"]
    for outcome in outcomes[1:]:
        assert math.isfinite(outcome.result.final_metrics["flow_loss"])
    assert len(list((tmp_path / "latent_cache").iterdir())) == 1  # one VAE, one dataset: one cache
    assert len(list((tmp_path / "text_cache").iterdir())) == 1  # only `flow` has a frozen text encoder
    assert "Latent cache of step flow: computing" in out
    assert "Latent cache of step flow_full: reusing" in out
    assert "Text cache of step flow: computing" in out and "Text cache of step flow_full" not in out


def test_a_flow_step_stopped_mid_epoch_resumes_from_its_cache_exactly(tmp_path):
    steps = [{"name": "vae", "n_epochs": 1, "max_steps": 2, "train_vae": True},
             {"name": "flow", "n_epochs": 2, "max_steps": 5, "train_diff": True}]
    config = functools.partial(tiny_config, steps=steps, log_interval=1, checkpoint_save_interval=2, no_samples=True)
    torch.manual_seed(PROCESS_SEED)
    reference = run_pipeline(config(tmp_path / "reference"))

    torch.manual_seed(PROCESS_SEED)
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(StepInterrupted):
        run_pipeline(config(tmp_path / "stopped"), tracker=StopAt(tmp_path / "stopped", "flow", 2, 3))
    clear_stop_request()
    resumed, printed = run_captured(config(tmp_path / "stopped"))

    assert "Resuming from checkpoint: step=2 (flow), epoch=2, batch=3" in printed
    assert "Latent cache of step flow: reusing" in printed and "Text cache of step flow: reusing" in printed
    a, b = load_weights(reference[1].ref.uri), load_weights(resumed[1].ref.uri)
    for part in ("models", "ema", "optimizers", "latent_norm"):
        assert_same_tensors(a[part], b[part], part)


def test_a_cache_of_part_of_the_dataset_measures_the_latent_normalisation_on_its_own_rows(tmp_path, monkeypatch):
    """A short flow step caches only the rows it reads: the latent-normalisation batches of epoch 0 and its own
    epochs' batches. Measuring the normalisation must not load one batch more than it uses (that row is not cached;
    `make demo` failed on exactly this)."""
    import fluxflow.train.step_cache as step_cache
    import fluxflow.train.step_run as step_run

    monkeypatch.setattr(step_cache, "LATENT_NORM_IMAGES", 8)  # 2 batches of 4 out of 64 images
    monkeypatch.setattr(step_run, "LATENT_NORM_IMAGES", 8)
    steps = [{"name": "vae", "n_epochs": 1, "max_steps": 2, "train_vae": True},
             {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff": True}]
    outcomes = run_pipeline(tiny_config(tmp_path, steps, dataset_size=64, no_samples=True))
    assert math.isfinite(outcomes[1].result.final_metrics["flow_loss"])
