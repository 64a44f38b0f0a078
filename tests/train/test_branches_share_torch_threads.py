"""A step started while another branch fits an evaluation's feature network on one thread trains on the process's
thread count, not on that one thread (fluxflow/runtime/torch_threads.py)."""
from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch
from helpers_tiny import tiny_config

import fluxflow.evaluation.frechet as frechet
import fluxflow.train.pipeline as pipeline

WAIT_S = 1.0  # how long the evaluation holds its one-thread section for the new step to start


@pytest.fixture
def two_threads():
    """At least two torch threads in this thread, so that one thread has something to lose (a parallel test process
    trains on one: tests/conftest.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(max(2, previous))
    yield
    torch.set_num_threads(previous)


def test_a_step_started_in_a_new_thread_during_an_evaluations_one_thread_fit_trains_on_all_threads(monkeypatch,
                                                                                                   two_threads):
    threads = torch.get_num_threads()
    fitting, step_started = threading.Event(), threading.Event()

    def fit(images, targets, epochs, seed):  # the evaluation's fit, held open while the new step starts
        fitting.set()
        step_started.wait(WAIT_S)
        return None

    monkeypatch.setattr(frechet, "_fit", fit)
    seen: dict[str, int] = {}

    def run_step(config, step_name, parent, tracker=None):
        seen["threads"] = torch.get_num_threads()
        step_started.set()

    monkeypatch.setattr(pipeline, "plan_step", lambda *args: SimpleNamespace(reuse_set_aside=lambda say: None))
    monkeypatch.setattr(pipeline, "run_step", run_step)
    config = tiny_config("unused")

    def evaluation():
        frechet.train_feature_net(torch.rand(4, 3, 16, 16), ["a red circle", "a blue square"] * 2)

    evaluating = threading.Thread(target=evaluation)
    evaluating.start()
    assert fitting.wait(30)
    step = threading.Thread(target=pipeline.train_step, args=(config, "warm", None))  # a fresh runner thread
    step.start()
    step.join(30)
    evaluating.join(30)
    assert seen["threads"] == threads
    assert torch.get_num_threads() == threads
