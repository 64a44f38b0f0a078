"""Weight decay only where nanoGPT and DiT put it: every optimizer built by build_optimizers has a decay group and a
no-decay group, and the no-decay group holds exactly the biases, norm weights, embedding tables, the text encoder's
positional embedding and the flow processor's null (CFG) embeddings of each component."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from helpers_tiny import TINY_MODEL
from torch import nn

from fluxflow.config.optim import OptimizerConfig
from fluxflow.config.schema import ModelConfig
from fluxflow.models import COMPONENTS, build_component
from fluxflow.train.optim import build_optimizers

NORMS = (nn.GroupNorm, nn.LayerNorm, nn.RMSNorm, nn.BatchNorm2d)
# Learned embeddings kept as plain parameters: fluxflow/models/text_encoder.py, fluxflow/models/flow_processor.py.
NAMED_EMBEDDINGS = {"text_encoder": {"pos"}, "flow_processor": {"null_tokens", "null_pooled"}}


def expected_no_decay(name: str, module: nn.Module) -> set[str]:
    """Named by what the parameters are (biases, norm and embedding layers), not by their shapes."""
    owners = dict(module.named_modules())
    names = set(NAMED_EMBEDDINGS.get(name, set()))
    for full, _ in module.named_parameters():
        owner, _, attribute = full.rpartition(".")
        if attribute == "bias" or isinstance(owners[owner], (*NORMS, nn.Embedding)):
            names.add(full)
    return names


def models_and_names():
    config = ModelConfig(**TINY_MODEL)
    return {name: build_component(name, config, 3) for name in COMPONENTS}


@pytest.mark.parametrize("group, components", [("vae", ("compressor", "expander")),
                                               ("discriminator", ("discriminator",)),
                                               ("flow", ("flow_processor",)), ("text_encoder", ("text_encoder",))])
def test_the_no_decay_group_holds_exactly_biases_norms_and_embeddings(group, components):
    models = models_and_names()
    step = SimpleNamespace(lr=1e-3, optimization=SimpleNamespace(optimizers={}, schedulers={}))
    optimizers = build_optimizers(step, models, set(components))
    decay_group, no_decay_group = optimizers[group].param_groups
    by_id = {id(p): f"{c}.{n}" for c in components for n, p in models[c].named_parameters()}
    no_decay = {by_id[id(p)] for p in no_decay_group["params"]}
    decay = {by_id[id(p)] for p in decay_group["params"]}
    want = {f"{c}.{n}" for c in components for n in expected_no_decay(c, models[c])}
    assert no_decay == want
    assert decay == set(by_id.values()) - want
    assert all(p.ndim >= 2 for p in decay_group["params"])  # only matrices and kernels decay
    assert (decay_group["weight_decay"], no_decay_group["weight_decay"]) == (0.1, 0.0)  # AdamW's default here


def test_the_named_embeddings_are_in_the_no_decay_group():
    models = models_and_names()
    step = SimpleNamespace(lr=1e-3, optimization=SimpleNamespace(optimizers={}, schedulers={}))
    optimizers = build_optimizers(step, models, {"flow_processor", "text_encoder"})
    no_decay = {id(p) for group in ("flow", "text_encoder") for p in optimizers[group].param_groups[1]["params"]}
    for name in ("pos", "embed.weight"):
        assert id(models["text_encoder"].get_parameter(name)) in no_decay, name
    for name in ("null_tokens", "null_pooled"):
        assert id(models["flow_processor"].get_parameter(name)) in no_decay, name


def test_a_configured_weight_decay_applies_to_the_decay_group_only():
    models = models_and_names()
    configured = {"discriminator": OptimizerConfig(type="SGD", lr=0.01, weight_decay=0.05).resolved(1e-3)}
    step = SimpleNamespace(lr=1e-3, optimization=SimpleNamespace(optimizers=configured, schedulers={}))
    optimizers = build_optimizers(step, models, {"discriminator"})
    decay_group, no_decay_group = optimizers["discriminator"].param_groups
    assert (decay_group["weight_decay"], no_decay_group["weight_decay"], decay_group["lr"]) == (0.05, 0.0, 0.01)


def test_frozen_parameters_are_in_no_group():
    models = models_and_names()
    models["expander"].requires_grad_(False)
    step = SimpleNamespace(lr=1e-3, optimization=SimpleNamespace(optimizers={}, schedulers={}))
    optimizers = build_optimizers(step, models, {"compressor"})
    held = {id(p) for group in optimizers["vae"].param_groups for p in group["params"]}
    assert held == {id(p) for p in models["compressor"].parameters()}
