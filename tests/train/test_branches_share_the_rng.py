"""Branches of one run train at the same time in threads of one process (the Prefect task runner's), and torch's
global generator is one per process: a step's fresh weights (drawn from it, seeded with the step's seed) must be the
ones it gets alone, whatever another branch does with the generator meanwhile (fluxflow/runtime/global_rng.py)."""
from __future__ import annotations

import threading

import torch
from helpers_tiny import one_torch_thread, tiny_raw

import fluxflow.train.trainer as trainer_module
from fluxflow.config import load_config
from fluxflow.evaluation.frechet import _fit
from fluxflow.train.trainer import build_trainer

__all__ = ["one_torch_thread"]

WAIT_S = 1.0  # how long branch a waits, inside its seeded section, for branch b to seed


def weights(trainer) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v.clone() for m, module in trainer.models.items() for k, v in module.state_dict().items()}


def build(config, name: str):
    step = config.step(name)
    return build_trainer(config, step, None, torch.device("cpu"), max_epochs=1)


def test_a_step_built_while_another_branch_seeds_gets_the_weights_it_gets_alone(monkeypatch, one_torch_thread):
    vae = {"n_epochs": 1, "train_vae": True}
    config = load_config(tiny_raw("unused", [{"name": "a", **vae}, {"name": "b", **vae}])).config
    alone = {name: weights(build(config, name)) for name in ("a", "b")}

    # a seeds, then waits (up to WAIT_S) before drawing its weights; b builds as soon as a has seeded. Unguarded, b's
    # seed lands in the middle of a's section and a draws b's numbers.
    a_seeded, b_seeded = threading.Event(), threading.Event()
    real = trainer_module.prepare_models

    def prepare(config, step, state, device):
        if step.name == "a":
            a_seeded.set()
            b_seeded.wait(WAIT_S)
        else:
            b_seeded.set()
        return real(config, step, state, device)

    monkeypatch.setattr(trainer_module, "prepare_models", prepare)
    built: dict[str, dict[str, torch.Tensor]] = {}

    def branch_b():
        a_seeded.wait(10)
        built["b"] = weights(build(config, "b"))

    thread = threading.Thread(target=branch_b)
    thread.start()
    built["a"] = weights(build(config, "a"))
    thread.join(30)
    for name in ("a", "b"):
        assert built[name].keys() == alone[name].keys()
        assert all(torch.equal(built[name][k], alone[name][k]) for k in alone[name]), f"branch {name}'s weights moved"


def test_an_evaluation_beside_a_branch_being_built_leaves_its_weights_alone(monkeypatch, one_torch_thread):
    """An evaluation's feature network is fitted in a forked generator that is put back at its end: unguarded, that
    puts back, mid-build, the state of before another branch seeded."""
    config = load_config(tiny_raw("unused", [{"name": "a", "n_epochs": 1, "train_vae": True}])).config
    alone = weights(build(config, "a"))
    seeded, forked = threading.Event(), threading.Event()
    real = trainer_module.prepare_models

    def prepare(config, step, state, device):
        seeded.set()
        forked.wait(WAIT_S)  # the evaluation forks and restores the generator meanwhile, unless it must wait
        return real(config, step, state, device)

    real_fork = torch.random.fork_rng

    def fork_rng(*args, **kwargs):
        forked.set()
        return real_fork(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "prepare_models", prepare)
    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)

    images, targets = torch.rand(4, 3, 16, 16), torch.rand(4, 2).round()  # drawn here: no draw of the test's races

    def evaluation():
        seeded.wait(10)
        _fit(images, targets, epochs=1, seed=7)

    thread = threading.Thread(target=evaluation)
    thread.start()
    built = weights(build(config, "a"))
    thread.join(30)
    assert all(torch.equal(built[k], alone[k]) for k in alone), "the weights moved"


def test_a_training_loader_leaves_the_global_generator_alone():
    """Each epoch's loader iterator draws a base seed for its workers: from the loader's own generator, not from the
    global one another branch may be drawing its weights from."""
    from fluxflow.data import build_dataset, make_loader

    config = load_config(tiny_raw("unused")).config
    dataset = build_dataset(config.training.pipeline.datasets["shapes"], 16, 3, "train")
    before = torch.get_rng_state()
    next(iter(make_loader(dataset, 4, 0, seed=0, epoch=0)))
    assert torch.equal(torch.get_rng_state(), before)


def test_a_branch_resuming_beside_a_branch_being_built_leaves_its_weights_alone(monkeypatch, one_torch_thread):
    """A retried step puts back the generator states its latest.pt saved (fluxflow/checkpoints/rng_state.py): unguarded,
    that lands between another branch's seeding and its draws."""
    from fluxflow.checkpoints.rng_state import capture_rng_state, restore_rng_state

    config = load_config(tiny_raw("unused", [{"name": "a", "n_epochs": 1, "train_vae": True}])).config
    alone = weights(build(config, "a"))
    torch.manual_seed(12345)
    saved = capture_rng_state()  # another branch's latest.pt
    seeded, restored = threading.Event(), threading.Event()
    real = trainer_module.prepare_models

    def prepare(config, step, state, device):
        seeded.set()
        restored.wait(WAIT_S)  # the other branch resumes meanwhile, unless it must wait
        return real(config, step, state, device)

    monkeypatch.setattr(trainer_module, "prepare_models", prepare)

    def resuming_branch():
        seeded.wait(10)
        restore_rng_state(saved)
        restored.set()

    thread = threading.Thread(target=resuming_branch)
    thread.start()
    built = weights(build(config, "a"))
    thread.join(30)
    assert all(torch.equal(built[k], alone[k]) for k in alone), "the weights moved"
