"""CUDA-only paths checked on the CPU: what a first GPU run would hit that a CPU run never does.

No GPU here, so the checks stand in for one: modules on the `meta` device (a device that is not the CPU), collectives
replaced by fakes that refuse what NCCL refuses (tensors not on the GPU), and `torch.cuda` queries monkeypatched.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fluxflow.runtime import distributed


class _Stop(Exception):
    """Raised by the fake collective once it has seen what it checks (a meta tensor has no value to go on with)."""


def test_rank_sync_check_gathers_on_the_parameters_device_as_nccl_requires(monkeypatch):
    modules = [nn.Linear(3, 2, device="meta"), nn.Linear(2, 1, device="meta")]
    seen = []

    def all_gather(outputs, tensor):  # NCCL: "No backend type associated with device type cpu"
        seen.append((tensor.device, [o.device for o in outputs]))
        raise _Stop

    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_gather", all_gather)
    with pytest.raises(_Stop):
        distributed.assert_in_sync(modules)
    assert seen == [(torch.device("meta"), [torch.device("meta")] * 2)]


STEP_FLAGS = {"vae": {"train_vae": True},
              "vae_gan_r1": {"train_vae": True, "gan_training": True, "r1_gamma": 1.0, "r1_interval": 1},
              "flow": {"train_diff": True}}
CAPTIONS = ["a red circle", "a blue square"]


def _trainer(kind: str, device: str, precision: str):
    from helpers_tiny import TINY_MODEL

    from fluxflow.config import load_config
    from fluxflow.train.trainer import build_trainer

    config = load_config({"model": TINY_MODEL, "data": {"img_size": 16},
                          "training": {"batch_size": 2, "precision": precision,
                                       "pipeline": {"steps": [{"name": kind, "n_epochs": 1, **STEP_FLAGS[kind]}]}}
                          }).config
    step = config.step(kind)
    trainer = build_trainer(config, step, None, torch.device(device), max_epochs=1)
    if kind == "flow":
        channels = config.model.latent_channels
        trainer.set_latent_norm({"shift": torch.zeros(channels), "scale": torch.ones(channels)})
    return trainer


class _MetaGenerator:
    """torch.Generator has no `meta` device: a stand-in that the wrapped random functions below take off again,
    after checking that it was made for the device it draws on."""

    def __init__(self, device=None):
        self.device = torch.device(device or "cpu")

    def manual_seed(self, seed: int) -> _MetaGenerator:
        return self


@pytest.mark.parametrize("kind", sorted(STEP_FLAGS))
def test_a_training_batch_stays_on_the_models_device_without_a_host_sync(kind, monkeypatch):
    """The step's batch on the `meta` device (standing in for CUDA): a tensor drawn or created on the CPU and mixed in
    raises there as on a GPU, and a host sync (.item(), float(), bool() of a tensor) raises too, as meta tensors have
    no values. Only what meta cannot run is replaced: the fused AdamW kernel (its `found_inf` must be on the
    parameters' device) and the foreach norm kernels."""
    monkeypatch.setattr(torch, "Generator", _MetaGenerator)
    mismatched = []

    def without_generator(draw):
        def wrapped(*args, generator=None, **kwargs):
            if generator is not None and generator.device != torch.device(kwargs.get("device") or "cpu"):
                mismatched.append((draw.__name__, generator.device, kwargs.get("device")))
            return draw(*args, **kwargs)
        return wrapped

    for name in ("randn", "rand", "randint"):
        monkeypatch.setattr(torch, name, without_generator(getattr(torch, name)))
    for name in ("get_total_norm", "clip_grads_with_norm_"):
        kernel = getattr(torch.nn.utils, name)
        monkeypatch.setattr(torch.nn.utils, name,
                            lambda *a, _kernel=kernel, **k: _kernel(*a, **{**k, "foreach": False}))

    def fused_step(optimizer, closure=None):  # optim.optimizer_step skips a non-finite update on the device
        if optimizer.found_inf.device != optimizer.param_groups[0]["params"][0].device:
            mismatched.append(("found_inf", optimizer.found_inf.device))

    monkeypatch.setattr(torch.optim.AdamW, "step", fused_step)
    trainer = _trainer(kind, "meta", "fp32")  # autocast has no meta device; bf16 is checked below on the CPU
    metrics = trainer.train_batch(torch.zeros(2, 3, 16, 16, device="meta"), CAPTIONS, global_step=0, update=0)
    assert mismatched == []
    assert metrics and {name: m.device.type for name, m in metrics.items()} == dict.fromkeys(metrics, "meta")


@pytest.mark.parametrize("kind", ["vae_gan_r1", "flow"])
def test_under_bf16_autocast_losses_weights_and_emas_stay_float32(kind):
    """What CUDA runs by default (precision auto -> bf16 autocast), run on the CPU: the losses and metrics are fp32,
    and the weights, their EMAs and the optimizer states too (bf16 only inside autocast's matmuls and convolutions)."""
    trainer = _trainer(kind, "cpu", "bf16")
    assert trainer.ctx.amp_dtype == torch.bfloat16
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    for i in range(2):
        metrics = trainer.train_batch(images, CAPTIONS, global_step=i, update=i)
    assert {name: m.dtype for name, m in metrics.items()} == dict.fromkeys(metrics, torch.float32)
    assert all(torch.isfinite(m) for m in metrics.values())
    tensors = [*(p for m in trainer.models.values() for p in m.parameters()),
               *(p for e in trainer.emas.values() for p in e.shadow.parameters()),
               *(s for o in trainer.optimizers.values() for state in o.state.values() for s in state.values())]
    assert trainer.emas and {t.dtype for t in tensors} == {torch.float32}


def test_ddp_flow_step_without_pooled_text_trains_past_its_first_batch(tmp_path, monkeypatch):
    """`model.text_pooled: false` leaves the pooled-text parameters out of every forward; a torchrun flow step wraps
    the flow model in DDP, which then raised at the second batch ("Expected to have finished reduction in the prior
    iteration"). A one-process gloo group shows it as two would (the reducer's check does not depend on the world)."""
    from helpers_tiny import TINY_MODEL

    import torch.distributed as dist
    from fluxflow.config import load_config
    from fluxflow.models import build_component
    from fluxflow.train.data_parallel import wrap_for_data_parallel

    config = load_config({"model": {**TINY_MODEL, "text_pooled": False}, "data": {"img_size": 16},
                          "training": {"batch_size": 2, "pipeline": {"steps": [{"name": "flow", "n_epochs": 1,
                                                                                 "train_diff": True}]}}}).config
    flow = build_component("flow_processor", config.model, 3)
    monkeypatch.setattr(distributed, "active", lambda: True)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = wrap_for_data_parallel({"flow_processor": flow}, config.step("flow"), {"flow_processor"},
                                     torch.device("cpu"))["flow_processor"]
        dim, length = config.model.text_embedding_dim, config.model.text_max_len
        for _ in range(3):
            flow.zero_grad(set_to_none=True)
            ddp(torch.randn(2, 4, 4, 4), torch.rand(2), torch.randn(2, length, dim),
                torch.ones(2, length, dtype=torch.bool), torch.randn(2, dim),
                torch.tensor([True, False])).square().mean().backward()
    finally:
        dist.destroy_process_group()
    unused = set(flow.unused_parameter_names())
    assert unused == {"null_pooled", "pooled_proj.weight", "pooled_proj.bias"}
    assert all((p.grad is None) == (name in unused) for name, p in flow.named_parameters())


@pytest.mark.parametrize(("native", "precision", "expected"), [
    (True, "auto", torch.bfloat16), (False, "auto", None), (False, "bf16", torch.bfloat16), (True, "fp32", None)])
def test_auto_precision_is_bf16_only_on_gpus_that_compute_in_it(native, precision, expected, monkeypatch):
    """A V100 or T4 (compute capability < 8) runs bf16 only emulated, slower than fp32: `auto` trains fp32 there.
    torch's check is faked: `including_emulation=True` (its default) says yes on those GPUs too."""
    from fluxflow.runtime.device import autocast_dtype

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
    assert autocast_dtype(torch.device("cuda"), precision) == expected
    assert autocast_dtype(torch.device("cpu"), "auto") is None


def test_a_cpu_step_on_a_gpu_host_pins_no_batches(tmp_path, monkeypatch):
    """Pinning starts CUDA (a context on GPU 0, where another job may train) for batches a CPU step never copies to a
    GPU. The loaders a CPU flow step makes (latent normalisation, training) are built as on a GPU host: with
    `torch.cuda.is_available()` true while they are made."""
    from helpers_tiny import tiny_config

    import fluxflow.data
    from fluxflow.train import step_data, step_run

    pinned = []

    def on_a_gpu_host(*args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: True)
            loader = fluxflow.data.make_loader(*args, **kwargs)
        pinned.append(loader.pin_memory)
        return loader

    monkeypatch.setattr(step_run, "make_loader", on_a_gpu_host)
    monkeypatch.setattr(step_data, "make_loader", on_a_gpu_host)
    config = tiny_config(tmp_path, [{"name": "flow", "n_epochs": 1, "max_steps": 1, "train_diff": True}],
                         no_samples=True)
    step_run.run_step(config, "flow", None)
    assert len(pinned) == 2 and not any(pinned), pinned


def test_ranks_wait_an_hour_for_rank_0_not_nccls_ten_minutes(monkeypatch):
    """Rank 0 alone evaluates and writes while the others wait at their next collective: a real-size step's first
    evaluation or a checkpoint upload can pass NCCL's default 10 minutes, which would end the job."""
    from datetime import timedelta

    import torch.distributed as dist

    from fluxflow.runtime import distributed

    given = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: given.update(kwargs))
    assert distributed.init_from_env(torch.device("cpu"))
    assert given == {"backend": "gloo", "timeout": timedelta(hours=1)}
