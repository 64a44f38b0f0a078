"""Which parameters get weight decay: the weights of linear layers and convolution kernels, nothing else.

As nanoGPT and DiT do, no decay for biases and normalisation weights (every parameter with fewer than two
dimensions: GroupNorm, LayerNorm, RMSNorm...), `nn.Embedding` tables, and the learned tables that are embeddings by
another name: the text encoder's positional embedding (`pos`, fluxflow/models/text_encoder.py) and the flow
processor's null text for classifier-free guidance (`null_tokens`, `null_pooled`, fluxflow/models/flow_processor.py).
Decay would pull learned positions and the unconditional text toward zero, which is a change of meaning, not
regularisation. tests/train/test_train_param_groups.py pins the exact names per component.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

# Parameter names (the attribute, not the dotted path) of learned embedding tables that are plain nn.Parameters.
EMBEDDING_PARAMETERS = frozenset({"pos", "null_tokens", "null_pooled"})


def no_decay_names(module: nn.Module) -> set[str]:
    """Dotted names (as in `module.named_parameters()`) of the parameters that get no weight decay."""
    return {f"{owner}.{attribute}" if owner else attribute
            for owner, sub in module.named_modules()
            for attribute, param in sub.named_parameters(recurse=False)
            if param.ndim < 2 or isinstance(sub, nn.Embedding) or attribute in EMBEDDING_PARAMETERS}


def split_decay(modules: Iterable[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay): the trainable parameters of `modules`, each in the modules' parameter order."""
    decay, no_decay, seen = [], [], set()
    for module in modules:
        exempt = no_decay_names(module)
        for name, param in module.named_parameters():
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if name in exempt else decay).append(param)
    return decay, no_decay


def param_groups(decay: list[nn.Parameter], no_decay: list[nn.Parameter]) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the decay group takes the optimizer's weight_decay, the other 0. Empty groups are
    left out, so the group order is always decay first."""
    return [group for group in ({"params": decay}, {"params": no_decay, "weight_decay": 0.0}) if group["params"]]
