"""Run one step on several processes: `run_step_on_processes`, which `train_step` (fluxflow/train/pipeline.py) calls.

On one node (`training.distributed.nodes` 1) the step runs under `torchrun --nproc_per_node=N` in a child process
group (`run_step_distributed`, below); across nodes through Ray Train (fluxflow/runtime/ray_train_launch.py). The child
is started in a new session so that, whatever happens to the caller (task timeout, Ctrl-C, an exception), the whole
process group — torchrun and every rank — is killed in `finally`.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fluxflow.checkpoints.ref import CheckpointRef, StepOutcome
from fluxflow.config.run_config import run_dict
from fluxflow.runtime.stop_request import POLL_S, StepInterrupted, stop_requested

log = logging.getLogger("fluxflow.train.step_run")  # the step runner's logger: its warnings reach the same handlers
# Every rank's code, named, not imported (processes sit under training): `main` under torchrun, `run_rank` under Ray.
RANK_ENTRY = "fluxflow.train.distributed_step"


def start_group(cmd: list[str]) -> subprocess.Popen:
    """`cmd` in a new session (its own process group, killed as one), with a copy of this process's environment.

    The copy is what makes the start safe beside threads that change `os.environ` (a branch's task, Ray's driver
    setup): CPython starts the child with vfork(), other threads run on meanwhile, and a child that inherits the
    environment reads this process's `environ` array during execve(), which another thread's setenv may have moved
    (EFAULT, "[Errno 14] Bad address": about half the starts in tests/runtime/test_launch.py without the copy).
    An explicit environment is copied into the child's arguments before the fork.
    """
    while True:
        try:
            environment = os.environ.copy()
            break
        except KeyError:  # a variable removed by another thread while it was copied: copy again
            continue
    return subprocess.Popen(cmd, env=environment, start_new_session=True)


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def _wait(proc: subprocess.Popen, step_name: str, timeout: float | None) -> int:
    """The exit code of torchrun; on a stop request (Ctrl-C in the flow) StepInterrupted at once. The ranks do not
    stop at a batch boundary then (they would have to agree on one): the group is killed, and the step resumes from
    its last mid-step checkpoint."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (rc := proc.poll()) is None:
        if stop_requested():
            raise StepInterrupted(f"step {step_name} interrupted: its torchrun processes are stopped; it resumes "
                                  "from its last checkpoint")
        if deadline is not None and time.monotonic() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(POLL_S)
    return rc


def run_step_distributed(config, step_name: str, parent: CheckpointRef | None, nproc: int,
                         timeout: float | None = None) -> StepOutcome:
    from fluxflow.checkpoints.step_files import plan_step

    plan_step(config, step_name).pull()  # an output on an object store: its files before any rank reads them
    with tempfile.TemporaryDirectory(prefix="fluxflow-ddp-") as tmp:
        tmp = Path(tmp)
        (tmp / "config.json").write_text(json.dumps(run_dict(config)))
        (tmp / "parent.json").write_text(json.dumps(parent.to_dict() if parent else None))
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", RANK_ENTRY, "--config", str(tmp / "config.json"), "--step", step_name,
               "--parent", str(tmp / "parent.json"), "--result", str(tmp / "result.json")]
        proc = start_group(cmd)
        try:
            rc = _wait(proc, step_name, timeout)
        finally:
            _kill_group(proc)
        result = tmp / "result.json"  # written (atomically) by rank 0 once every rank has finished the step
        if rc != 0 and not result.exists():
            raise RuntimeError(f"step {step_name}: torchrun with {nproc} processes exited with code {rc}")
        if rc != 0:  # a rank that failed while the group was torn down, after the step: its result stands
            log.warning("Step %s: torchrun exited with code %d after every rank had finished the step (checkpoint "
                        "and result written); the step's result stands", step_name, rc)
        return StepOutcome.from_dict(json.loads(result.read_text()))


def run_step_on_processes(config, step_name: str, parent: CheckpointRef | None,
                          timeout: float | None = None) -> StepOutcome:
    """The step on its `training.distributed.processes` (nodes × nproc_per_node, more than one): torchrun on one
    node, Ray Train's TorchTrainer across nodes; every process runs `RANK_ENTRY`."""
    dist = config.training.distributed
    if dist.uses_ray_train:
        from fluxflow.runtime.ray_train_launch import run_step_on_ray  # Ray only where a step asks for it

        return run_step_on_ray(config, step_name, parent, dist.processes, entry=RANK_ENTRY, timeout=timeout,
                               address=config.training.executor.ray_address())
    return run_step_distributed(config, step_name, parent, dist.nproc_per_node, timeout=timeout)
