"""The expander decodes the way it was trained: a step that trains it with SPADE makes every later decode use SPADE
(the flow step's samples and evaluation, fluxflow-generate, the served model), although a flow step cannot set
train_spade; a later step that trains it without SPADE turns that off again."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers_tiny import load_weights, one_torch_thread, tiny_config

from fluxflow.config import modes
from fluxflow.models.expander import Expander
from fluxflow.sampling.generate import load_text_to_image
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

SPADE_VAE = {"name": "vae", "n_epochs": 1, "max_steps": 2, "train_vae": True, "train_spade": True}
FLOW = {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff": True}


def step(**on):
    values = {m: False for m in modes.ALL_MODES} | {"unfreeze": [], "freeze": []}
    return SimpleNamespace(**(values | on))


@pytest.mark.parametrize("on,inherited,decodes", [
    (dict(train_vae=True, train_spade=True), False, True),
    (dict(train_vae=True), True, False),  # trained again without SPADE
    (dict(train_diff=True), True, True),  # a flow step keeps how the expander was trained
    (dict(train_diff=True), False, False),
    (dict(train_vae=True, freeze=["expander"]), True, True),  # the expander is not trained here
])
def test_the_step_that_last_trained_the_expander_decides_how_it_decodes(on, inherited, decodes):
    assert modes.expander_spade(step(**on), inherited) is decodes


def test_a_flow_step_after_a_spade_vae_step_samples_evaluates_and_generates_with_spade(tmp_path, monkeypatch,
                                                                                      one_torch_thread):
    out = tmp_path / "out"
    run_pipeline(tiny_config(out, [SPADE_VAE], no_samples=True))  # the VAE step, finished before the recording
    decodes = []
    forward = Expander.forward

    def recorded(self, z, spade=False):
        decodes.append(spade)
        return forward(self, z, spade)

    monkeypatch.setattr(Expander, "forward", recorded)
    run_pipeline(tiny_config(out, [SPADE_VAE, dict(FLOW, eval_interval=1)], no_samples=False))
    assert decodes and all(decodes), decodes  # its text-to-image samples and its evaluation's images

    final = out / "checkpoints" / "flow" / "final.pt"
    assert load_weights(final)["expander_spade"] is True
    assert load_text_to_image(final, device="cpu").spade is True  # fluxflow-generate, promotion, the served model
