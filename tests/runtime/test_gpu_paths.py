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
