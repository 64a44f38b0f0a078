"""Inside a step task that Ray placed: which node it runs on, torch's threads set to the CPUs Ray gave it, and what
Ray's cancel does to it."""
from __future__ import annotations

import contextlib
import math
import signal
import socket
import threading

from fluxflow.checkpoints.ref import StepNode
from fluxflow.runtime.stop_request import clear_stop_request, request_stop, stop_requested


def use_assigned_cpus() -> None:
    """Inside a Ray task: torch's threads = the CPUs Ray assigned it (at least 1). Ray sets OMP_NUM_THREADS per
    task, but torch fixes its thread count when first used, and the worker may have imported it for another task
    (warm_up's, which holds no CPU)."""
    import ray
    import torch

    threads = max(1, math.floor(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    torch.set_num_threads(threads)


def current_node() -> StepNode:
    """Inside a Ray task: the node it runs on."""
    import ray

    return StepNode(node_id=ray.get_runtime_context().get_node_id(), hostname=socket.gethostname())


@contextlib.contextmanager
def cancel_stops_at_a_batch():
    """Inside a Ray task, around its step: Ray's cancel (`ray.cancel`, what an interrupted run sends its steps: a
    SIGINT simulated in the task's main thread) asks the step to stop at its next batch, saving `latest.pt` there as
    the local path does on Ctrl-C; a second one interrupts at once. Raised where it landed, the KeyboardInterrupt once
    came inside the `torch.save` of a periodic checkpoint as a RuntimeError ('unexpected pos'), which Prefect retried:
    the step trained on to its end. A stop request left by a cancelled task does not carry into the next task of the
    same worker process. Off the main thread (where no signal handler can be set), nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_cancel(signum, frame):
        if stop_requested():
            signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt
        request_stop()

    clear_stop_request()
    previous = signal.signal(signal.SIGINT, on_cancel)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
