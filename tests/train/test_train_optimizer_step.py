"""The optimizer step the runner calls for every optimizer group (fluxflow/train/optim.py: optimizer_step): gradient
clipping bounds the update, and a finite loss with non-finite gradients leaves the weights alone and is reported
skipped, for fused (device-side skip) and unfused optimizers alike."""
from __future__ import annotations

import math

import pytest
import torch

from fluxflow.train.optim import make_optimizer, optimizer_step

UNFUSED = ("Adagrad", "Adadelta", "RMSprop")


def weights_and_optimizer(kind: str, lr: float = 0.1, **params):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(16))
    return w, make_optimizer({"type": kind, "lr": lr, **params}, [w], lr)


def backward(w: torch.nn.Parameter, scale: float) -> torch.Tensor:
    loss = scale * (w * torch.linspace(-1.0, 1.0, w.numel())).sum()
    loss.backward()
    return torch.isfinite(loss)


@pytest.mark.parametrize("max_norm", [1.0, 0.25])
def test_a_huge_gradient_moves_the_weights_by_at_most_lr_times_max_norm(max_norm):
    w, optimizer = weights_and_optimizer("SGD", lr=0.1)  # no momentum: the update is -lr x the clipped gradient
    before = w.detach().clone()
    finite = backward(w, 1e6)
    expected_norm = 1e6 * torch.linspace(-1.0, 1.0, 16).norm()
    (norm,), skipped = optimizer_step([optimizer], finite, max_norm)
    moved = (w.detach() - before).norm()
    assert float(skipped) == 0.0
    assert math.isclose(float(norm), float(expected_norm), rel_tol=1e-5)  # the norm before clipping
    assert float(moved) <= 0.1 * max_norm * (1 + 1e-5)
    assert float(moved) > 0.1 * max_norm * 0.99  # clipped to max_norm, not to nothing


def test_without_max_norm_the_gradient_is_not_clipped_but_its_norm_is_returned():
    w, optimizer = weights_and_optimizer("SGD", lr=0.1)
    before = w.detach().clone()
    finite = backward(w, 10.0)
    gradient = w.grad.clone()
    for off in (None, 0.0):
        if off == 0.0:  # a second batch with clipping turned off by 0
            before, finite = w.detach().clone(), backward(w, 10.0)
        (norm,), skipped = optimizer_step([optimizer], finite, off)
        assert torch.allclose(w.detach(), before - 0.1 * gradient)
        assert math.isclose(float(norm), float(gradient.norm()), rel_tol=1e-6) and float(skipped) == 0.0


@pytest.mark.parametrize("kind", ["AdamW", "SGD", *UNFUSED])
@pytest.mark.parametrize("max_norm", [1.0, None])
def test_a_finite_loss_with_nan_gradients_leaves_the_weights_unchanged_and_is_skipped(kind, max_norm):
    w, optimizer = weights_and_optimizer(kind)
    finite = backward(w, 1.0)
    assert bool(finite)
    w.grad[3] = float("nan")  # e.g. an overflow inside the backward pass of a finite loss
    before = w.detach().clone()
    (norm,), skipped = optimizer_step([optimizer], finite, max_norm)
    assert torch.equal(w.detach(), before)
    assert float(skipped) == 1.0 and not math.isfinite(float(norm))
    assert w.grad is None  # gradients are cleared either way


def test_a_skipped_fused_adamw_update_leaves_its_state_as_if_it_never_happened():
    """The next good batch then trains exactly as it would have without the bad one."""
    w, optimizer = weights_and_optimizer("AdamW")
    w_ref, reference = weights_and_optimizer("AdamW")
    backward(w, 1.0)
    w.grad[0] = float("inf")
    optimizer_step([optimizer], torch.tensor(True), 1.0)
    for weights, opt in ((w, optimizer), (w_ref, reference)):
        optimizer_step([opt], backward(weights, 1.0), 1.0)
    assert torch.equal(w.detach(), w_ref.detach())


@pytest.mark.parametrize("kind, params", [("SGD", {"momentum": 0.9}), ("SGD", {"momentum": 0.9, "nesterov": True}),
                                           ("SGD", {}), ("Adam", {}), ("RMSprop", {"momentum": 0.9})])
def test_a_skipped_first_update_leaves_no_trace_in_the_next_one(kind, params):
    """Fused SGD with momentum allocated its momentum buffers uninitialised on a skipped first step and used them
    on the next: one non-finite first batch (lr 1e6 style) made every weight NaN at the next, finite, update."""
    w, optimizer = weights_and_optimizer(kind, **params)
    w_ref, reference = weights_and_optimizer(kind, **params)
    backward(w, 1.0)
    w.grad[0] = float("inf")
    (_,), skipped = optimizer_step([optimizer], torch.tensor(True), 1.0)
    assert float(skipped) == 1.0
    for weights, opt in ((w, optimizer), (w_ref, reference)):
        for _ in range(2):
            optimizer_step([opt], backward(weights, 1.0), 1.0)
    assert torch.equal(w.detach(), w_ref.detach())


def test_a_non_finite_loss_is_skipped_as_before_with_the_old_call():
    """optimizer_step(optimizers, finite): no clipping argument, same skipping."""
    w, optimizer = weights_and_optimizer("AdamW")
    backward(w, 1.0)
    before = w.detach().clone()
    (norm,), skipped = optimizer_step([optimizer], torch.tensor(False))
    assert torch.equal(w.detach(), before) and float(skipped) == 1.0 and math.isfinite(float(norm))
