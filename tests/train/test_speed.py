"""Speed switches (fluxflow/train/speed.py): `training.compile` compiles each trained component once (no recompile
per batch) and trains the same numbers; R1 keeps the discriminator eager; activation checkpointing recomputes each
flow block in backward without changing the gradients."""
from __future__ import annotations

import shutil

import pytest
import torch
from helpers_tiny import one_torch_thread, shapes_batches, tiny_raw

from fluxflow.config import load_config
from fluxflow.models.latents import measure_latent_norm
from fluxflow.train.trainer import build_trainer

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FLOW_FULL = {"name": "flow", "n_epochs": 1, "train_diff_full": True}


def trainer_for(step: dict, **training):
    raw = tiny_raw("unused", [step])
    raw["training"].update(training)
    config = load_config(raw).config
    trainer = build_trainer(config, config.resolved_steps()[0], None, torch.device("cpu"), max_epochs=1)
    return trainer, config


def is_compiled(module: torch.nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def test_compile_compiles_the_trained_components_in_place_and_keeps_the_r1_discriminator_eager():
    gan, _ = trainer_for({"name": "gan", "n_epochs": 1, "train_vae": True, "gan_training": True, "r1_gamma": 1.0},
                         compile=True)
    assert {n for n, m in gan.ctx.models.items() if is_compiled(m)} == {"compressor", "expander"}
    assert not is_compiled(gan.ctx.models["discriminator"])  # R1 is a double backward: torch.compile cannot
    no_r1, _ = trainer_for({"name": "gan", "n_epochs": 1, "train_vae": True, "gan_training": True, "r1_gamma": 0.0},
                           compile=True)
    assert is_compiled(no_r1.ctx.models["discriminator"])
    flow, _ = trainer_for(FLOW_FULL, compile=True)
    assert {n for n, m in flow.ctx.models.items() if is_compiled(m)} == {"flow_processor", "text_encoder"}
    # In place: the modules checkpoints and EMAs read are the same objects, with the same state_dict keys.
    assert flow.ctx.models["flow_processor"] is flow.models["flow_processor"]
    assert not any(k.startswith("_orig_mod") for k in flow.models["flow_processor"].state_dict())
    eager, _ = trainer_for(FLOW_FULL)
    assert not any(is_compiled(m) for m in eager.ctx.models.values())


@pytest.mark.slow  # inductor compiles C++ for the CPU: about a minute on 2 busy cores
@pytest.mark.skipif(shutil.which("g++") is None,
                    reason="torch.compile's CPU backend (inductor) builds C++ kernels and no g++ is on PATH")
def test_a_compiled_flow_step_trains_like_eager_and_never_recompiles():
    from torch._dynamo.utils import counters

    eager, config = trainer_for(FLOW_FULL)
    compiled, _ = trainer_for(FLOW_FULL, compile=True)
    batches = shapes_batches(config, 4)
    norm = measure_latent_norm(eager.ctx.latent_encoder, batches[0][0])
    eager.set_latent_norm(norm)
    compiled.set_latent_norm(norm)
    torch._dynamo.reset()
    counters.clear()
    graphs = []
    for i, (images, captions) in enumerate(batches):
        want = eager.train_batch(images, captions, i, i)["flow_loss"]
        got = compiled.train_batch(images, captions, i, i)["flow_loss"]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] == 2, graphs  # one graph per compiled component (flow_processor, text_encoder)
    assert graphs == [graphs[0]] * len(batches), f"recompiled after the first batch: {graphs}"
    assert sum(counters["graph_break"].values()) == 0


def test_activation_checkpointing_recomputes_each_block_with_the_same_gradients():
    trainer, config = trainer_for({"name": "flow", "n_epochs": 1, "train_diff": True}, activation_checkpointing=True)
    flow = trainer.models["flow_processor"]
    assert flow.activation_checkpointing
    calls, forward = [], flow.blocks[0].forward

    def counted_forward(*args):  # (forward hooks do not run again in the recomputation; the forward itself does)
        calls.append(1)
        return forward(*args)

    flow.blocks[0].forward = counted_forward
    torch.manual_seed(0)
    with torch.no_grad():  # off the zero-initialised gates, so that every block gets a gradient
        for p in flow.parameters():
            p.normal_(0.0, 0.05)
    x_t, t = torch.randn(2, 4, 4, 4), torch.rand(2)
    tokens, pooled = torch.randn(2, 8, 32), torch.randn(2, 32)
    mask = torch.ones(2, 8, dtype=torch.bool)
    grads = []
    for checkpointing in (True, False):
        flow.activation_checkpointing = checkpointing
        flow.zero_grad(set_to_none=True)
        flow(x_t, t, tokens, mask, pooled).square().mean().backward()
        grads.append([p.grad.clone() for p in flow.parameters() if p.grad is not None])
    assert len(calls) == 3  # checkpointed: forward, and again in backward; then once without
    assert all(g.abs().sum() > 0 for g in grads[1])
    for with_ckpt, without in zip(*grads):
        torch.testing.assert_close(with_ckpt, without)
    with torch.no_grad():  # sampling never recomputes
        calls.clear()
        flow.activation_checkpointing = True
        flow(x_t, t, tokens, mask, pooled)
    assert len(calls) == 1
