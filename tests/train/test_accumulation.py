"""Gradient accumulation and clipping as the runner applies them: k micro-batches of b make the update of one batch
of k·b; a stop inside a window saves at the window's end and resumes bit-identically; a NaN gradient under a finite
loss moves no weight and is counted."""
from __future__ import annotations

import contextlib
import functools
import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers_tiny import (VAE_STEP, changed_components, load_weights, one_torch_thread, shapes_batches, snapshot,
                          tiny_config)
from test_runner_resume import StopAt, assert_same_tensors

from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request
from fluxflow.train.batch_step import Window
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SGD = {"optimization": {"optimizers": {"vae": {"type": "SGD", "lr": 0.05}}}}


def vae_trainer(batch_size: int, accumulation: int, **step):
    from fluxflow.train.trainer import build_trainer

    fields = {"name": "s", "n_epochs": 1, "train_vae": True, "grad_clip": 0,
              "gradient_accumulation_steps": accumulation, **SGD, **step}
    config = tiny_config("unused", [fields], batch_size=batch_size)
    return build_trainer(config, config.step("s"), None, torch.device("cpu"), max_epochs=1), config


def test_k_micro_batches_of_b_update_like_one_batch_of_k_times_b(monkeypatch):
    import fluxflow.train.batch_step as batch_step

    monkeypatch.setattr(batch_step, "sample_latent", lambda mean, logvar, generator: mean)  # no sampling noise
    whole, config = vae_trainer(batch_size=8, accumulation=1)
    split, _ = vae_trainer(batch_size=4, accumulation=2)
    images, captions = shapes_batches(config, 1)[0]

    whole.train_batch(images, captions, global_step=0, update=0)
    split.train_batch(images[:4], captions[:4], global_step=0, update=0, window=Window(scale=0.5, last=False))
    assert changed_components(snapshot(whole.models), split.models) >= {"compressor", "expander"}  # no step yet
    split.train_batch(images[4:], captions[4:], global_step=1, update=0, window=Window(scale=0.5, last=True))

    for name in ("compressor", "expander"):
        a, b = whole.models[name].state_dict(), split.models[name].state_dict()
        for key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=1e-5), f"{name}.{key}"


@pytest.mark.slow
def test_under_a_2_process_gloo_torchrun_accumulation_equals_one_batch_and_reduces_once(tmp_path, monkeypatch):
    import fluxflow.train.batch_step as batch_step

    out = tmp_path / "rank0.pt"
    worker = Path(__file__).resolve().parents[1] / "workers" / "accumulation_rank.py"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(worker), str(out)], capture_output=True, text=True, timeout=300,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = torch.load(out, weights_only=True)
    assert ranks["reductions"] == 1  # one gradient all-reduce per optimizer step, not one per micro-batch

    monkeypatch.setattr(batch_step, "sample_latent", lambda mean, logvar, generator: mean)
    whole, config = vae_trainer(batch_size=16, accumulation=1)
    images = torch.cat([batch[0] for batch in shapes_batches(vae_trainer(batch_size=8, accumulation=2)[1], 2)])
    whole.train_batch(images, [""] * 16, global_step=0, update=0)
    for name, tensors in ranks["models"].items():
        mine = whole.models[name].state_dict()
        for key, value in tensors.items():
            assert torch.allclose(mine[key], value, atol=1e-6, rtol=1e-5), f"{name}.{key}"


def test_a_nan_gradient_under_a_finite_loss_moves_no_weight_and_is_counted():
    trainer, config = vae_trainer(batch_size=4, accumulation=1)
    images, captions = shapes_batches(config, 1)[0]
    weight = next(trainer.models["expander"].parameters())
    weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    before = snapshot(trainer.models)

    metrics = trainer.train_batch(images, captions, global_step=0, update=0)

    assert torch.isfinite(metrics["vae_loss"])
    assert changed_components(before, trainer.models) == set()
    assert float(metrics["skipped_updates"]) == 1.0
    assert not torch.isfinite(metrics["grad_norm_vae"])


def test_a_huge_gradient_is_clipped_to_grad_clip():
    trainer, config = vae_trainer(batch_size=4, accumulation=1, grad_clip=0.5)
    images, captions = shapes_batches(config, 1)[0]
    for p in trainer.models["expander"].parameters():
        p.register_hook(lambda grad: grad * 1e6)
    before = snapshot(trainer.models)

    metrics = trainer.train_batch(images, captions, global_step=0, update=0)

    moved = torch.cat([(trainer.models[c].state_dict()[k] - before[c][k]).flatten().float()
                       for c in ("compressor", "expander") for k in before[c]
                       if before[c][k].is_floating_point()])
    assert float(metrics["grad_norm_vae"]) > 1e3  # the norm before clipping is what is logged
    assert float(moved.norm()) <= 0.05 * 0.5 * (1 + 1e-4)  # SGD: lr × the clipped norm at most


STEPS = [{"name": "warm", "n_epochs": 2, "max_steps": 5, "train_vae": True, "gradient_accumulation_steps": 2}]


def test_a_stop_inside_an_accumulation_window_saves_at_its_end_and_resumes_bit_identically(
        tmp_path):
    config = functools.partial(tiny_config, steps=STEPS, log_interval=1, checkpoint_save_interval=100,
                               no_samples=True)
    [reference] = run_pipeline(config(tmp_path / "reference"))

    stopped = tmp_path / "stopped"
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(StepInterrupted, match="epoch 1, batch 4"):
        run_pipeline(config(stopped), tracker=StopAt(stopped, "warm", 1, 3))  # asked after batch 3, mid-window
    meta = load_weights(stopped / "checkpoints" / "warm" / "latest.pt")["pipeline_metadata"]
    assert (meta["current_step_epoch"], meta["batch"]) == (0, 4)

    clear_stop_request()
    with contextlib.redirect_stdout(io.StringIO()):
        [resumed] = run_pipeline(config(stopped))
    a, b = load_weights(reference.ref.uri), load_weights(resumed.ref.uri)
    assert a["global_step"] == b["global_step"] == 10
    for part in ("models", "ema", "optimizers"):
        assert_same_tensors(a[part], b[part], part)
    assert float(a["optimizers"]["vae"]["state"][0]["step"]) == 6  # 3 windows per epoch (2 + 2 + 1 batches), 2 epochs


def test_counts_the_step_cannot_reach_are_warned_at_its_start(tmp_path, caplog, one_torch_thread):  # noqa: F811
    """An accumulation window longer than the epoch (max_steps 2, gradient_accumulation_steps 8: each update averaged
    2 batches), a KL warm-up longer than the step, an eval_interval beyond its epochs: accepted without a word, as an
    lr schedule that never acts no longer is."""
    import logging

    from fluxflow.train.step_run import counts_beyond_the_step

    step = dict(VAE_STEP, gradient_accumulation_steps=8, kl_warmup_steps=100, eval_interval=3)
    config = tiny_config(tmp_path / "out", [step])
    warm = config.step("warm")
    assert counts_beyond_the_step(warm, 2, 1) == [
        "gradient_accumulation_steps 8 is more than the epoch's 2 batches: each update averages 2 batches, not 8 "
        "(every epoch ends with an update)",
        "kl_warmup_steps 100 is more than the step's 1 optimizer update: the KL weight ends at 1/100 of kl_beta",
        "eval_interval 3 is more than the step's 1 epoch: it is evaluated at its end only"]
    # 'epochs', not 'epoches' (the plural rule read 'epoch' as 'batch')
    assert counts_beyond_the_step(warm, 8, 2)[-1] == ("eval_interval 3 is more than the step's 2 epochs: it is "
                                                      "evaluated at its end only")
    assert counts_beyond_the_step(warm.model_copy(update={"kl_warmup_steps": 4, "eval_interval": 1,
                                                          "gradient_accumulation_steps": 2}), 8, 1) == []
    caplog.set_level(logging.WARNING, logger="fluxflow.train.step_run")
    run_pipeline(config)
    assert "Step warm: gradient_accumulation_steps 8 is more than the epoch's 2 batches" in caplog.text
