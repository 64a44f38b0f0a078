"""The timestep shift a flow trained with (`t_shift`, scaled to its images) is the one its sampler follows: samples,
evaluation, `fluxflow-generate`, an export and the served model. It shaped training only, and the sampler spent more
than a quarter of its steps where a shift of 3 draws 4 % of the training timesteps."""
from __future__ import annotations

import pytest
import torch
from helpers_tiny import VAE_STEP, one_thread, step_context, tiny_config

from fluxflow.checkpoints.io import load_checkpoint
from fluxflow.sampling import text_to_image as t2i
from fluxflow.sampling.export import export_weights, load_exported
from fluxflow.sampling.generate import generate, load_text_to_image
from fluxflow.train.pipeline import run_pipeline

FLOW = {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff_full": True, "t_shift": 3.0}
AFTER = {"name": "vae_after", "n_epochs": 1, "max_steps": 2, "train_vae": True}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    with one_thread():
        out = tmp_path_factory.mktemp("shift") / "out"
        run_pipeline(tiny_config(out, [dict(VAE_STEP), FLOW, AFTER], no_samples=True))
    return out / "checkpoints"


def test_the_checkpoint_records_the_flows_shift_and_later_steps_keep_it(trained):
    assert load_checkpoint(trained / "warm" / "final.pt")["flow_shift"] == 1.0  # no flow trained yet
    assert load_checkpoint(trained / "flow" / "final.pt")["flow_shift"] == 3.0
    assert load_checkpoint(trained / "vae_after" / "final.pt")["flow_shift"] == 3.0  # the flow it carries


def test_generation_and_an_export_sample_on_the_shifted_schedule(trained, tmp_path, monkeypatch):
    used = []
    sample_flow = t2i.sample_flow
    monkeypatch.setattr(t2i, "sample_flow", lambda *a, **kw: used.append(kw["shift"]) or sample_flow(*a, **kw))
    model = load_text_to_image(trained / "flow" / "final.pt", device="cpu")
    image = generate(model, "a red circle", seed=1, steps=4)
    exported = load_exported(export_weights(model, tmp_path / "export"), "cpu")
    assert exported.flow_shift == 3.0
    assert torch.equal(generate(exported, "a red circle", seed=1, steps=4), image)
    assert used == [3.0, 3.0]


@pytest.mark.parametrize("step, shift", [
    ({"train_diff_full": True, "t_shift": 2.0}, 2.0),  # trains the flow: its own shift
    ({"train_diff_full": True, "t_shift": 2.0, "freeze": ["flow_processor"]}, 3.0),  # the text encoder alone
    ({"train_vae": True}, 3.0),
])
def test_only_a_step_that_trains_the_flow_model_sets_its_shift(step, shift):
    # A text-encoder fine-tune after a flow trained at shift 3 recorded its own (1.0 by default, here 2.0) for a flow
    # model it left bit-identical, and every later sample used that schedule.
    ctx, _ = step_context(dict(step, max_steps=2), state={"flow_shift": 3.0})
    assert ctx.flow_shift == shift
