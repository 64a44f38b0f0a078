"""The latent normalisation (per-channel shift/scale of the flow latents) is measured on the compressor that encodes:
a step that trains the compressor drops the inherited one, so the next flow step measures again; a step that keeps the
compressor frozen carries it. Under torchrun each rank's webdataset batches are batch_size / world, and the
measurement still covers LATENT_NORM_IMAGES images."""
from __future__ import annotations

import pytest
import torch
from helpers_tiny import load_weights, one_torch_thread, tiny_config
from test_data_webdataset import make_shard

from fluxflow.checkpoints.step_state import saved_latent_norm_remeasure
from fluxflow.data import build_dataset
from fluxflow.models import build_component
from fluxflow.models.latents import LATENT_NORM_IMAGES, measure_latent_norm
from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.step_data import StepData, leading_inputs, load_step_data

__all__ = ["one_torch_thread"]

FLOW = {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff": True}
VAE = {"name": "vae", "n_epochs": 1, "max_steps": 2, "train_vae": True}
JOINT = {"name": "joint", "n_epochs": 1, "max_steps": 2, "train_vae": True, "train_diff": True}
DECODER = {"name": "decoder", "n_epochs": 1, "max_steps": 2, "train_vae": True, "freeze": ["compressor"]}


def norm_of(out, step: str) -> dict | None:
    return load_weights(out / "checkpoints" / step / "final.pt")["latent_norm"]


def test_a_step_that_trains_the_compressor_makes_the_next_flow_step_measure_again(tmp_path, one_torch_thread):
    out = tmp_path / "out"
    run_pipeline(tiny_config(out, [FLOW, VAE, dict(FLOW, name="flow_again")], no_samples=True))
    first = norm_of(out, "flow")
    assert norm_of(out, "vae") is None  # measured on a compressor the VAE step changed
    again = norm_of(out, "flow_again")
    assert again is not None and not torch.equal(first["shift"], again["shift"])


def fresh_norm(config, out, parent: str, step_name: str) -> dict:
    """The normalisation measured now, on the parent's final compressor (its EMA weights, which the flow encodes
    with), over the images the flow step measures on."""
    compressor = build_component("compressor", config.model, config.data.channels)
    compressor.load_state_dict(load_weights(out / "checkpoints" / parent / "final.pt")["ema"]["compressor"]["shadow"])
    step = next(s for s in config.resolved_steps() if s.name == step_name)
    data = load_step_data(config, step, torch.device("cpu"))
    inputs = leading_inputs(data, step.batch_size, step.seed, LATENT_NORM_IMAGES, torch.device("cpu"))
    return measure_latent_norm(compressor.eval(), inputs)


@pytest.mark.parametrize("between", [[], [dict(DECODER, name="between")]], ids=["next", "after_a_decoder_step"])
def test_the_flow_step_after_a_joint_vae_and_flow_step_measures_again(tmp_path, one_torch_thread, between):
    # The joint step measured the normalisation at its start and saved it; the next flow step inherited it although
    # the joint step had changed the compressor since. A step between them that carries it carries the mark too.
    out = tmp_path / "out"
    config = tiny_config(out, [JOINT, *between, FLOW], no_samples=True)
    run_pipeline(config)
    joint, flow = norm_of(out, "joint"), norm_of(out, "flow")
    for step in ("joint", *(s["name"] for s in between)):  # kept: the joint step's flow samples with it
        assert all(torch.equal(joint[k], norm_of(out, step)[k]) for k in joint)
    assert not torch.equal(joint["shift"], flow["shift"])
    fresh = fresh_norm(config, out, (["joint"] + [s["name"] for s in between])[-1], "flow")
    assert all(torch.allclose(flow[k], fresh[k], rtol=1e-5, atol=1e-6) for k in fresh)


def test_a_step_with_the_compressor_frozen_carries_the_normalisation(tmp_path, one_torch_thread):
    out = tmp_path / "out"
    run_pipeline(tiny_config(out, [FLOW, DECODER], no_samples=True))
    first, carried = norm_of(out, "flow"), norm_of(out, "decoder")
    assert carried is not None and all(torch.equal(first[k], carried[k]) for k in first)


def test_a_ranks_webdataset_part_measures_as_many_images_as_one_process(tmp_path):
    for s in range(4):  # 4 shards of 5 images: each of 2 ranks reads 2 shards
        with open(tmp_path / f"shards-{s:03d}.tar", "wb") as f:
            make_shard(f, s)
    ds_cfg = type("Cfg", (), dict(type="webdataset", urls=str(tmp_path / "shards-{000..003}.tar"), length=None,
                                  holdout=0))()
    part = build_dataset(ds_cfg, 8, 3, "train", rank=0, world=2)
    data = StepData(train_set=part, holdout_set=part, holdout_images=None, batches_per_epoch=1)
    batches = list(leading_inputs(data, batch_size=4, seed=0, n_items=8, device=torch.device("cpu")))
    assert [b.shape[0] for b in batches] == [2, 2, 2, 2]  # the rank's local batches: 8 images, not 8 / world


@pytest.mark.parametrize("state, remeasure", [
    ({"latent_norm_remeasure": False, "pipeline_metadata": {"step_config": JOINT}}, False),  # as recorded
    ({"pipeline_metadata": {"step_config": JOINT}}, True),  # written before it was recorded: its step trained it
    ({"pipeline_metadata": {"step_config": dict(JOINT, freeze=["compressor"])}}, False),
    ({"pipeline_metadata": {"step_config": FLOW}}, False),
    (None, False),
])
def test_a_checkpoint_says_whether_its_normalisation_is_measured_again(state, remeasure):
    assert saved_latent_norm_remeasure(state) is remeasure
