"""Inside a step task that Ray placed: which node it runs on, and torch's threads set to the CPUs Ray gave it."""
from __future__ import annotations

import socket

from fluxflow.checkpoints.ref import StepNode


def use_assigned_cpus() -> None:
    """Inside a Ray task: torch's threads = the CPUs Ray assigned it (at least 1). Ray sets OMP_NUM_THREADS per
    task, but torch fixes its thread count when first used, and the worker may have imported it for another task
    (warm_up's, which holds no CPU)."""
    import math

    import ray
    import torch

    threads = max(1, math.floor(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(threads)


def current_node() -> StepNode:
    """Inside a Ray task: the node it runs on."""
    import ray

    return StepNode(node_id=ray.get_runtime_context().get_node_id(), hostname=socket.gethostname())
