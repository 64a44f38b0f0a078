"""Seed replicates (fluxflow/config/steps.py): each replicated step becomes one branch per seed, grouped under
its hypothesis, with its own seed, name, parent and step key; the file's other steps are unchanged."""
from __future__ import annotations

import pytest
from helpers_tiny import step_keys, tiny_raw

from fluxflow.config import ConfigError, load_config

WARM = {"name": "warm", "n_epochs": 1, "train_vae": True}
FLOW = {"n_epochs": 1, "train_diff": True}
BRANCHES = [WARM, {"name": "a", **FLOW}, {"name": "b", **FLOW, "after": "warm"}]


def config(tmp_path, steps, replicates):
    raw = tiny_raw(tmp_path, steps)
    if replicates is not None:
        raw["training"]["replicates"] = replicates
    return load_config(raw).config


def table(config) -> list[tuple]:
    return [(s.index, s.name, s.parent, s.seed, s.hypothesis) for s in config.resolved_steps()]


def test_replicates_from_named_steps_branch_each_per_seed_from_the_shared_step(tmp_path):
    c = config(tmp_path, BRANCHES, {"seeds": [0, 1, 2], "from_steps": ["a", "b"]})
    assert table(c) == [(0, "warm", None, 0, "warm"),
                        (1, "a-seed0", "warm", 0, "a"), (2, "a-seed1", "warm", 1, "a"), (3, "a-seed2", "warm", 2, "a"),
                        (4, "b-seed0", "warm", 0, "b"), (5, "b-seed1", "warm", 1, "b"), (6, "b-seed2", "warm", 2, "b")]
    keys = step_keys(c)
    assert len(set(keys.values())) == 7  # every replicate has files of its own
    assert keys["warm"] == step_keys(config(tmp_path, BRANCHES, None))["warm"]  # the shared step is reused


def test_replicating_the_whole_pipeline_makes_one_chain_per_seed(tmp_path):
    c = config(tmp_path, [WARM, {"name": "flow", **FLOW}], {"seeds": [3, 7]})
    assert table(c) == [(0, "warm-seed3", None, 3, "warm"), (1, "warm-seed7", None, 7, "warm"),
                        (2, "flow-seed3", "warm-seed3", 3, "flow"), (3, "flow-seed7", "warm-seed7", 7, "flow")]


def test_a_replicated_step_takes_the_steps_below_it_along(tmp_path):
    steps = [WARM, {"name": "a", **FLOW}, {"name": "a_more", **FLOW}, {"name": "b", **FLOW, "after": "warm"}]
    c = config(tmp_path, steps, {"seeds": [0, 1], "from_steps": ["a"]})
    assert [(s.name, s.parent) for s in c.resolved_steps()] == [
        ("warm", None), ("a-seed0", "warm"), ("a-seed1", "warm"), ("a_more-seed0", "a-seed0"),
        ("a_more-seed1", "a-seed1"), ("b", "warm")]


@pytest.mark.parametrize("replicates,steps,message", [
    ({"seeds": [0, 1], "from_steps": ["c"]}, BRANCHES,
     "training.replicates.from_steps[0]: no step is named 'c'"),
    ({"seeds": [0, 0]}, BRANCHES, "training.replicates.seeds: seeds must be distinct"),
    ({"seeds": []}, BRANCHES, "training.replicates.seeds: List should have at least 1 item"),
    ({"seeds": [1], "from_steps": ["a"]}, [*BRANCHES, {"name": "a-seed1", **FLOW, "after": "warm"}],
     "training.replicates: replica 'a-seed1' of step 'a' has the name of a step of the file"),
    ({"seeds": [10], "from_steps": ["a" * 60]}, [WARM, {"name": "a" * 60, **FLOW}],
     f"training.replicates: replica name '{'a' * 60}-seed10' of step '{'a' * 60}' is longer than 64 characters"),
    # numpy's SeedSequence refuses a negative seed: such a replica would fail at its start, after the run began.
    ({"seeds": [-1, 5], "from_steps": ["b"]}, BRANCHES,
     "training.replicates.seeds[0]: Input should be greater than or equal to 0"),
])
def test_invalid_replicates_are_reported_with_their_field(tmp_path, replicates, steps, message):
    with pytest.raises(ConfigError) as raised:
        config(tmp_path, steps, replicates)
    assert [str(i) for i in raised.value.issues][0].startswith(message), raised.value.issues
