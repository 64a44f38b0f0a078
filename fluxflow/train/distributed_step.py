"""One rank of a step on several processes: `run_rank`, whatever started the process.

Under torchrun each rank is `python -m fluxflow.runtime.torchrun_main ... -m fluxflow.train.distributed_step`
(`main`); under Ray Train each rank is a Ray Train worker calling `run_rank` (fluxflow/runtime/ray_train_launch.py).
Both launchers (fluxflow/runtime/launch.py) name this module, never import it: processes sit under training. Every
rank runs the same `run_step`; rank 0 alone writes checkpoints, samples, the metrics file and the result.

torchrun starts each rank in a session of its own, where a signal to torchrun's process group does not reach it: a
rank under torchrun dies with torchrun (`die_with_torchrun`), which dies with the process that started it
(fluxflow/runtime/launch.py).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import torch.distributed as dist

from fluxflow.runtime import distributed, kill_points
from fluxflow.checkpoints.atomic_file import atomic_write
from fluxflow.checkpoints.ref import CheckpointRef
from fluxflow.config.run_config import run_config_of
from fluxflow.errors import NonRetryable
from fluxflow.runtime.launch import LAUNCHER_ENV
from fluxflow.runtime.parent_death import die_with_parent, parent_of
from fluxflow.train.step_run import run_step


def run_rank(config: dict, step_name: str, parent: dict | None) -> dict | None:
    """Train this rank's share of the step from the resolved config (`run_dict`) and the parent reference, as JSON.
    Returns the `StepOutcome` as a dict on rank 0, None on the others."""
    outcome = run_step(run_config_of(config), step_name, CheckpointRef.from_dict(parent) if parent else None)
    return outcome.to_dict() if distributed.is_main() else None


def leave_together() -> None:
    """A barrier before the process group goes: a rank that tears it down while another still uses it aborts."""
    if distributed.active():
        dist.barrier()


def die_with_torchrun() -> None:
    """SIGKILL when torchrun dies, whatever kills it (its SIGTERM stops the ranks itself; a SIGKILL, the launcher's
    after 10 s or the OOM killer's, cannot), so that no rank trains on, holding the step's directory, for nobody. A
    torchrun that died before this took effect (this rank was handed to another parent) ends the rank at once. Only
    under fluxflow/runtime/launch.py, which names itself in `LAUNCHER_ENV`: torchrun's parent is that process."""
    launcher = os.environ.get(LAUNCHER_ENV)
    if not launcher:
        return
    torchrun = os.getppid()
    die_with_parent(torchrun, signal.SIGKILL)
    if parent_of(torchrun) not in (int(launcher), None):  # None: no /proc to read (not Linux)
        os._exit(1)


def main(argv: list[str] | None = None) -> int:
    die_with_torchrun()
    parser = argparse.ArgumentParser(description="One pipeline step on one torchrun rank (internal).")
    parser.add_argument("--config", required=True, help="JSON file with the resolved pipeline config")
    parser.add_argument("--step", required=True, help="name of the step to run")
    parser.add_argument("--parent", required=True, help="JSON file with the parent CheckpointRef (or null)")
    parser.add_argument("--result", required=True, help="where rank 0 writes the StepOutcome JSON")
    parser.add_argument("--error", help="where a rank writes an error a retry does not fix, for the launcher")
    args = parser.parse_args(argv)
    # The config was resolved by the caller (fluxflow/runtime/launch.py).
    config, parent = (json.loads(Path(path).read_text()) for path in (args.config, args.parent))
    try:
        outcome = run_rank(config, args.step, parent)
    except NonRetryable as exc:  # e.g. another run holds the step's directory: the launcher says it, in one line
        if args.error is None:
            raise
        error = {"type": type(exc).__name__, "message": str(exc)}
        atomic_write(args.error, lambda f: f.write(json.dumps(error).encode()), durable=False)
        return 1  # torchrun stops the other ranks
    if outcome is not None:  # whole or absent: the launcher takes a result it finds as the step's, whatever follows
        atomic_write(args.result, lambda f: f.write(json.dumps(outcome).encode()), durable=False)
    leave_together()
    kill_points.reached(f"teardown_rank{distributed.rank()}")
    if distributed.active():  # torchrun's process group is ours to end (Ray Train ends its own)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
