"""The pipeline tree the flow schedules: branches are steps sharing a parent, leaves end a hypothesis."""
from helpers_tiny import tiny_raw

from fluxflow.config.dag import branch_names, children_of, depth, descendants, leaf_names
from fluxflow.config import load_config


def steps_of(*steps):
    return load_config(tiny_raw("unused", list(steps))).config.resolved_steps()


def step(name, **extra):
    return {"name": name, "n_epochs": 1, "train_vae": True, **extra}


def test_steps_in_file_order_form_a_chain_without_branches():
    steps = steps_of(step("a"), step("b"), step("c"))
    assert children_of(steps) == {None: ["a"], "a": ["b"], "b": ["c"]}
    assert branch_names(steps) == []
    assert leaf_names(steps) == ["c"]


def test_steps_after_the_same_parent_are_branches_and_both_are_leaves():
    steps = steps_of(step("warm"), step("spade_off"), step("spade_on", after="warm", train_spade=True))
    assert children_of(steps)["warm"] == ["spade_off", "spade_on"]
    assert branch_names(steps) == ["spade_off", "spade_on"]
    assert leaf_names(steps) == ["spade_off", "spade_on"]


def test_descendants_are_everything_below_a_step_in_file_order():
    steps = steps_of(step("warm"), step("a"), step("a2"), step("b", after="warm"), step("b2"))
    assert descendants(steps, ["warm"]) == ["a", "a2", "b", "b2"]
    assert descendants(steps, ["a"]) == ["a2"]
    assert descendants(steps, ["b2"]) == []


def test_depth_counts_the_steps_above_and_branches_of_one_parent_share_it():
    steps = steps_of(step("warm"), step("a"), step("a2"), step("b", after="warm"), step("b2"))
    assert {s.name: depth(steps, s.name) for s in steps} == {"warm": 0, "a": 1, "a2": 2, "b": 1, "b2": 2}
