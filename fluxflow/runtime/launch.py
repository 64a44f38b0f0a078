"""Run one step on several processes: `run_step_on_processes`, which `train_step` (fluxflow/train/pipeline.py) calls.

On one node (`training.distributed.nodes` 1) the step runs under `torchrun --nproc_per_node=N` in a child process
group (`run_step_distributed`, below); across nodes through Ray Train (fluxflow/runtime/ray_train_launch.py). torchrun
is started in a new session (a Ctrl-C or a signal to the caller's process group does not reach it) and stopped in
`finally` whatever happens to the caller (task timeout, Ctrl-C, an exception): SIGTERM, on which its agent stops every
rank. A caller killed with kill -9 runs no `finally`: torchrun then gets that SIGTERM from the kernel, its parent-death
signal (fluxflow/runtime/parent_death.py), and each rank, which torchrun starts in a session of its own, dies with
torchrun in turn (fluxflow/train/distributed_step.py), so that a rerun finds the step's directory free.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fluxflow.checkpoints.lock import RunLock, RunLockedError
from fluxflow.checkpoints.ref import CheckpointRef, StepOutcome
from fluxflow.config.run_config import run_dict
from fluxflow.errors import NonRetryable
from fluxflow.runtime.parent_death import dies_with_this_thread
from fluxflow.runtime.stop_request import wait_for

log = logging.getLogger("fluxflow.train.step_run")  # the step runner's logger: its warnings reach the same handlers
# Every rank's code, named, not imported (processes sit under training): `main` under torchrun, `run_rank` under Ray.
RANK_ENTRY = "fluxflow.train.distributed_step"
TORCHRUN = "fluxflow.runtime.torchrun_main"  # torch.distributed.run without a traceback when stopped on purpose
# The pid of the process that started torchrun, in torchrun's environment and so in every rank's: a rank whose
# torchrun is no longer that process's child ends itself (fluxflow/train/distributed_step.py).
LAUNCHER_ENV = "FLUXFLOW_LAUNCHER_PID"
SCRATCH_PREFIX = "fluxflow-ddp-"  # torchrun's folder of this step's files, under the temporary directory
_HELD = "launcher.lock"  # in that folder: locked while its launcher lives (flock, dropped by the kernel at its death)


class RankRefused(NonRetryable, RuntimeError):
    """A rank stopped on an error that running the step again does not fix; the message is the rank's."""


def start_group(cmd: list[str]) -> subprocess.Popen:
    """`cmd` in a new session (its own process group, killed as one), with a copy of this process's environment.

    The copy is what makes the start safe beside threads that change `os.environ` (a branch's task, Ray's driver
    setup): CPython started the child with vfork() (before its `preexec_fn`; fork() since), other threads run on
    meanwhile, and a child that inherits the environment reads this process's `environ` array during execve(), which
    another thread's setenv may have moved (EFAULT, "[Errno 14] Bad address": about half the starts in
    tests/runtime/test_launch.py without the copy). An explicit environment is copied into the child's arguments
    before the fork.

    The child gets SIGTERM from the kernel when the calling thread ends (a kill -9 of this process): call it from the
    thread that waits for the child, as `run_step_distributed` does. `LAUNCHER_ENV` names this process to it.
    """
    environment = None
    while environment is None:
        with contextlib.suppress(KeyError):  # a variable removed by another thread while it was copied: copy again
            environment = os.environ.copy()
    environment[LAUNCHER_ENV] = str(os.getpid())
    return subprocess.Popen(cmd, env=environment, start_new_session=True, preexec_fn=dies_with_this_thread())


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


def run_step_distributed(config, step_name: str, parent: CheckpointRef | None, nproc: int,
                         timeout: float | None = None) -> StepOutcome:
    from fluxflow.checkpoints.step_files import plan_step

    files = plan_step(config, step_name)
    # Rank 0 holds the step's directory while the step runs (fluxflow/train/step_run.py). Asked here first, a
    # directory another run holds is refused in one line, before torchrun and its ranks start and fail on it.
    with RunLock(files.dir):
        files.pull()  # an output on an object store: its files before any rank reads them
    with scratch_dir() as tmp:
        (tmp / "config.json").write_text(json.dumps(run_dict(config)))
        (tmp / "parent.json").write_text(json.dumps(parent.to_dict() if parent else None))
        # --log-dir: torchrun's own folder (one per run, else left under the temporary directory) goes with ours
        cmd = [sys.executable, "-m", TORCHRUN, "--standalone", f"--nproc_per_node={nproc}",
               "--log-dir", str(tmp / "torchrun"), "-m", RANK_ENTRY, "--config", str(tmp / "config.json"),
               "--step", step_name, "--parent", str(tmp / "parent.json"), "--result", str(tmp / "result.json"),
               "--error", str(tmp / "error.json")]
        proc = start_group(cmd)
        try:
            if not wait_for(lambda: proc.poll() is not None, step_name, "torchrun processes", timeout):
                raise subprocess.TimeoutExpired(proc.args, timeout)
        finally:
            _kill_group(proc)
        rc = proc.returncode
        result = tmp / "result.json"  # written (atomically) by rank 0 once every rank has finished the step
        if rc != 0 and not result.exists():
            refused = _rank_error(tmp / "error.json")
            if refused is not None:
                raise refused
            raise RuntimeError(f"step {step_name}: torchrun with {nproc} processes exited with code {rc}")
        if rc != 0:  # a rank that failed while the group was torn down, after the step: its result stands
            log.warning("Step %s: torchrun exited with code %d after every rank had finished the step (checkpoint "
                        "and result written); the step's result stands", step_name, rc)
        return StepOutcome.from_dict(json.loads(result.read_text()))


def _rank_error(path: Path) -> NonRetryable | None:
    """The error a rank wrote before it stopped when it was one a retry does not fix (another run took the step's
    directory between the check above and rank 0's start; data a rank cannot train on): raised here as such, in one
    line, not as torchrun's exit code, which the orchestrator would retry."""
    try:
        error = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    kind = RunLockedError if error.get("type") == RunLockedError.__name__ else RankRefused
    return kind(error.get("message", ""))


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A new folder under the temporary directory for torchrun's files, removed at the end. A launcher killed with
    kill -9 cannot remove its folder: the next launch removes those whose launcher is gone (`_remove_abandoned`)."""
    _remove_abandoned()
    tmp = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    held = None
    try:
        held = os.open(tmp / f".{_HELD}.new", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        fcntl.flock(held, fcntl.LOCK_EX)
        os.rename(tmp / f".{_HELD}.new", tmp / _HELD)  # it appears locked: never taken for abandoned
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if held is not None:  # after the folder is gone
            os.close(held)


def _remove_abandoned() -> None:
    """Remove the folders of `scratch_dir` whose launcher has died (their lock is free). A folder without the lock
    file, or of another user, is left alone."""
    for folder in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            held = os.open(folder / _HELD, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # its launcher is running
            pass
        finally:
            os.close(held)


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
