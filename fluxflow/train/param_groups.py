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


def split_decay(modules: Iterable[nn.Module]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(decay, no_decay): the trainable parameters of `modules`, each in the modules' parameter order (the order of
    `named_parameters()`: each submodule's own parameters, submodules in `modules()` order)."""
    decay, no_decay, seen = [], [], set()
    for sub in (part for module in modules for part in module.modules()):
        for attribute, param in sub.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            exempt = param.ndim < 2 or isinstance(sub, nn.Embedding) or attribute in EMBEDDING_PARAMETERS
            (no_decay if exempt else decay).append(param)
    return decay, no_decay


def param_groups(decay: list[nn.Parameter], no_decay: list[nn.Parameter]) -> list[dict[str, Any]]:
    """Optimizer parameter groups: the decay group takes the optimizer's weight_decay, the other 0. Empty groups are
    left out, so the group order is always decay first."""
    return [group for group in ({"params": decay}, {"params": no_decay, "weight_decay": 0.0}) if group["params"]]
