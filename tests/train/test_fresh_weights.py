"""Branches of one parent are hypotheses compared from the same checkpoint: a component that starts fresh in each
starts from the same weights (the step's seed + its depth in the pipeline's tree, fluxflow/train/trainer.py), as the
branches share data order and noise, wherever they stand in the file; a step one further down draws other ones."""
from __future__ import annotations

import torch
from helpers_tiny import one_torch_thread, tiny_raw
from test_branches_share_the_rng import build, weights

from fluxflow.config import load_config

__all__ = ["one_torch_thread"]

WARM = {"name": "warm", "n_epochs": 1, "train_vae": True}
FLOW = {"n_epochs": 1, "train_diff": True}


def differing(x: dict[str, torch.Tensor], y: dict[str, torch.Tensor]) -> list[str]:
    """The tensors of two builds' weights that are not equal (both builds have the same components)."""
    assert x.keys() == y.keys()
    return [k for k in x if not torch.equal(x[k], y[k])]


def test_branches_of_one_parent_start_their_fresh_components_alike_wherever_they_stand_in_the_file(one_torch_thread):
    steps = [WARM, {"name": "a", **FLOW}, {"name": "a_more", **FLOW}, {"name": "b", "after": "warm", **FLOW}]
    config = load_config(tiny_raw("unused", steps)).config
    a, a_more, b = (weights(build(config, name)) for name in ("a", "a_more", "b"))
    assert differing(a, b) == []  # a stands second in the file, b fourth
    assert differing(a, a_more) != []


def test_seed_replicates_of_two_hypotheses_pair_their_fresh_weights_by_seed(one_torch_thread):
    raw = tiny_raw("unused", [WARM, {"name": "a", **FLOW}, {"name": "b", "after": "warm", **FLOW}])
    raw["training"]["replicates"] = {"seeds": [0, 1], "from_steps": ["a", "b"]}
    config = load_config(raw).config
    built = {name: weights(build(config, name)) for name in ("a-seed0", "a-seed1", "b-seed0", "b-seed1")}
    for seed in (0, 1):
        assert differing(built[f"a-seed{seed}"], built[f"b-seed{seed}"]) == []
    assert differing(built["a-seed0"], built["a-seed1"]) != []


def test_a_component_the_step_trains_starts_fresh_quietly_and_one_it_only_uses_with_a_warning(caplog):
    """The discriminator of the first GAN step after a VAE warm-up is new as a matter of course (it was a WARNING on
    every such run); a frozen component missing from the input checkpoint is drawn untrained, which is worth one."""
    import logging

    from helpers_tiny import single_step_config

    from fluxflow.models import build_component
    from fluxflow.train.step_models import prepare_models

    config, gan = single_step_config({"train_vae": True, "gan_training": True})
    vae_only = {"models": {name: build_component(name, config.model, config.data.channels).state_dict()
                           for name in ("compressor", "expander")}}
    with caplog.at_level(logging.INFO, logger="fluxflow.train.step_run"):
        prepare_models(config, gan, vae_only, torch.device("cpu"))
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "Auto-created discriminator with default parameters from the model config (not in the input "
                 "checkpoint)")]
    caplog.clear()
    config, flow = single_step_config({"train_diff": True})
    with caplog.at_level(logging.INFO, logger="fluxflow.train.step_run"):
        prepare_models(config, flow, {"models": {}}, torch.device("cpu"))
    warned = {r.getMessage().split()[1]: r.levelname for r in caplog.records}
    assert warned["compressor"] == warned["expander"] == "WARNING" and warned["flow_processor"] == "INFO"
    assert all(r.getMessage().endswith("so it is used untrained") for r in caplog.records if r.levelname == "WARNING")


def test_the_largest_seed_the_config_accepts_seeds_every_batch():
    """A seed up to 2**63 - 1 is valid; its batch seeds (x 1,000,003) went past torch's range (2**64), and the step
    stopped with "Overflow when unpacking long long" after validation had accepted it."""
    from fluxflow.train.trainer import batch_seed

    largest = 2**63 - 1
    for global_step in (0, 1, 10**6):
        torch.Generator().manual_seed(batch_seed(largest, global_step))
    assert batch_seed(3, 7) == 3 * 1_000_003 + 7  # a usual seed's batches draw what they drew before
    assert batch_seed(10**13, 0) == 10**13 * 1_000_003  # above 2**63, below 2**64: torch took it, and takes it still
