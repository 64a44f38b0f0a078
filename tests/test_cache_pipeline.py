"""A tiny pipeline end to end with the caches on by default: VAE, then two flow branches on its frozen VAE. The
first branch builds the latent and text caches, the second reuses the latent cache, and both train."""
from __future__ import annotations

import math

import pytest
from helpers_tiny import one_torch_thread, tiny_config

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
