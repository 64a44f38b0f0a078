"""Run one step across nodes through Ray Train, and read back its outcome.

Used when `training.distributed.nodes > 1` (`run_step_on_processes` in fluxflow/runtime/launch.py). Ray Train's
`TorchTrainer` starts nodes × nproc_per_node workers, sets up their torch process group (gloo on CPU, NCCL on CUDA)
and the RANK / WORLD_SIZE / LOCAL_RANK a torchrun rank sees; each worker then runs `run_rank`, the per-rank runner of
the torchrun path: the same data sharding (by rank and world size), rank 0 alone writing, the same-weights check at
the end. Rank 0's `StepOutcome` comes back as the train function's return value.

A worker or node that dies mid-step: Ray Train tears the group down and starts it again, up to
`training.pipeline.retries` times (`FailureConfig.max_failures`); the new ranks find the step's `latest.pt` and resume
from it, exactly as a rerun does. So the output directory must be storage every node sees, as for Ray Train's own
`storage_path`, which is put under it.

`fit()` runs inside a Ray task of this driver's (`_fit`), so that a stop request (Ctrl-C in the flow) or a timeout
ends the whole run at once: cancelling the task kills it, and with it the Train controller it owns and the workers
the controller owns (Ray's ownership fate-sharing), as killing torchrun's process group does on one node.

Ray is imported lazily, here only: the local path never imports it.
"""
from __future__ import annotations

import importlib
import os
import socket
import uuid

from fluxflow.checkpoints.ref import CheckpointRef, StepOutcome
from fluxflow.config.run_config import run_dict
from fluxflow.runtime.stop_request import wait_for
from fluxflow.storage.location import local_path, remote_uri
from fluxflow.wording import counted

# Ray Train sends a worker's print() to its logger and, where stdout is redirected (a Ray worker's is), to stdout as
# well: rank 0's console lines would reach the driver twice. Plain prints, forwarded once.
WORKER_ENV = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


def train_worker(loop_config: dict) -> dict | None:
    """One Ray Train worker: one rank of the step (`run_rank` of the rank entry, whose `main` a torchrun rank runs)."""
    import torch
    import ray.train.torch

    # Ray Train starts workers in its own run directory; relative paths in the config mean what they mean to the
    # driver (as under torchrun, whose ranks inherit its working directory) where that directory exists.
    if os.path.isdir(loop_config["cwd"]):
        os.chdir(loop_config["cwd"])
    if loop_config["use_gpu"]:
        # A rank trains on cuda:LOCAL_RANK (fluxflow/runtime/distributed.py); the GPU Ray Train gave this worker is
        # ray.train.torch.get_device(), whose index among the visible ones need not be its local rank.
        gpu = ray.train.torch.get_device()
        torch.cuda.set_device(gpu)
        os.environ["LOCAL_RANK"] = str(gpu.index)
    rank_entry = importlib.import_module(loop_config["entry"])
    outcome = rank_entry.run_rank(loop_config["config"], loop_config["step"], loop_config["parent"])
    workers = worker_nodes(ray)  # rank 0 says where every rank trained: the step's run records it
    rank_entry.leave_together()  # then Ray Train ends the process group
    if outcome is not None:
        outcome["workers"] = workers
    return outcome


def worker_nodes(ray) -> list[dict]:
    """Every rank's node (id and hostname, `StepNode.to_dict()`), by rank: a collective, all ranks call it."""
    import torch.distributed as dist

    here = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    if not dist.is_initialized():
        return [here]
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, here)
    return gathered


def capacity_problem(offered: dict, nproc: int, use_gpu: bool, step_name: str) -> str | None:
    """The line saying that the whole cluster (`offered`: its resources in total) has fewer GPUs (CPUs) than the step
    has workers, else None. Also asked before a run starts (flows/ray_steps.py), where it can exit 2."""
    kind = "GPU" if use_gpu else "CPU"
    if offered.get(kind, 0) < nproc:
        return (f"step {step_name}: training.distributed asks for {nproc} workers with one {kind} each; "
                f"the Ray cluster has {counted(offered.get(kind, 0), kind, spec='g')} in all")
    return None


def _connect(ray, address: str | None, step_name: str) -> None:
    """Join the Ray cluster: the one this process is already part of (a Ray task, a test), else `address`,
    RAY_ADDRESS, or the local cluster `ray start` left (`auto`)."""
    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS") or "auto"
    try:
        ray.init(address=target, log_to_driver=True)
    except ConnectionError as exc:
        raise RuntimeError(f"step {step_name}: training.distributed.nodes > 1 needs a Ray cluster, and none answers "
                           f"at {target!r} ({exc})") from None


def run_step_on_ray(config, step_name: str, parent: CheckpointRef | None, nproc: int, *, entry: str,
                    timeout: float | None = None, address: str | None = None) -> StepOutcome:
    """The step on `nproc` Ray Train workers (nodes × nproc_per_node); the shape of `run_step_distributed`. `entry`:
    the module every rank runs (fluxflow/runtime/launch.py RANK_ENTRY, named: processes sit under training)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from fluxflow.runtime.distributed import RANK_WAIT  # torch: here, not where flows/ray_steps asks for capacity

    _connect(ray, address, step_name)
    device = config.training.device  # `auto`: CUDA where the cluster has GPUs (the driver may have none)
    use_gpu = ray.cluster_resources().get("GPU", 0) >= 1 if device == "auto" else device == "cuda"
    problem = capacity_problem(ray.cluster_resources(), nproc, use_gpu, step_name)
    if problem:  # at once: Ray Train would wait for the workers, time out and try again, for ever
        raise RuntimeError(problem)
    # An object store every node reaches (fluxflow/storage): Ray Train's records go there too.
    output = remote_uri(config.output.output_path)
    if output is None:  # the workers may run where the driver's relative paths mean nothing: an absolute path
        output = str(local_path(config.output.output_path).resolve())
        config = config.model_copy(update={"output": config.output.model_copy(update={"output_path": output})})
    loop_config = {"config": run_dict(config), "step": step_name, "entry": entry,
                   "parent": parent.to_dict() if parent else None, "use_gpu": use_gpu, "cwd": os.getcwd()}
    trainer = TorchTrainer(
        train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo", timeout_s=int(RANK_WAIT.total_seconds())),
        scaling_config=ScalingConfig(num_workers=nproc, use_gpu=use_gpu),
        run_config=RunConfig(name=f"{step_name}-{uuid.uuid4().hex[:8]}", storage_path=f"{output}/ray_train",
                             failure_config=FailureConfig(max_failures=config.training.pipeline.retries),
                             worker_runtime_env={"env_vars": WORKER_ENV}),
    )
    fit = ray.remote(num_cpus=0)(_fit).remote(trainer)
    try:  # until the Train run ends
        if not wait_for(lambda: bool(ray.wait([fit], timeout=0)[0]), step_name, "Ray Train workers", timeout):
            raise TimeoutError(f"step {step_name}: Ray Train did not finish within {timeout} s")
    except BaseException:
        # Still running: end it, and with it the controller and workers it owns. Never a finished task: Ray 2.60's
        # driver aborts ("Tried to complete task that was not pending") when a force-cancel meets its completion.
        ray.cancel(fit, force=True)
        raise
    try:
        outcome = ray.get(fit)
    except ray.exceptions.RayTaskError as exc:  # the Train error (its workers' tracebacks are in the log above)
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        raise RuntimeError(f"step {step_name}: Ray Train failed: {cause}") from None
    if outcome is None:
        raise RuntimeError(f"step {step_name}: Ray Train with {nproc} workers returned no outcome from rank 0")
    return StepOutcome.from_dict(outcome)


def _fit(trainer) -> dict | None:
    """A Ray task's body (num_cpus=0: the workers hold the resources): the Train run, rank 0's outcome."""
    return trainer.fit().return_value
