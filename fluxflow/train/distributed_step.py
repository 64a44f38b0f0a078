"""One rank of a step on several processes: `run_rank`, whatever started the process.

Under torchrun each rank is `python -m torch.distributed.run ... -m fluxflow.train.distributed_step` (`main`); under
Ray Train each rank is a Ray Train worker calling `run_rank` (fluxflow/runtime/ray_train_launch.py). Both launchers
(fluxflow/runtime/launch.py) name this module, never import it: processes sit under training. Every rank runs the same
`run_step`; rank 0 alone writes checkpoints, samples, the metrics file and the result.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch.distributed as dist

from fluxflow.runtime import distributed, kill_points
from fluxflow.checkpoints.io import atomic_write
from fluxflow.checkpoints.ref import CheckpointRef
from fluxflow.config.run_config import run_config_of
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One pipeline step on one torchrun rank (internal).")
    parser.add_argument("--config", required=True, help="JSON file with the resolved pipeline config")
    parser.add_argument("--step", required=True, help="name of the step to run")
    parser.add_argument("--parent", required=True, help="JSON file with the parent CheckpointRef (or null)")
    parser.add_argument("--result", required=True, help="where rank 0 writes the StepOutcome JSON")
    args = parser.parse_args(argv)
    # The config was resolved by the caller (fluxflow/runtime/launch.py).
    config, parent = (json.loads(Path(path).read_text()) for path in (args.config, args.parent))
    outcome = run_rank(config, args.step, parent)
    if outcome is not None:  # whole or absent: the launcher takes a result it finds as the step's, whatever follows
        atomic_write(args.result, lambda f: f.write(json.dumps(outcome).encode()), durable=False)
    leave_together()
    kill_points.reached(f"teardown_rank{distributed.rank()}")
    if distributed.active():  # torchrun's process group is ours to end (Ray Train ends its own)
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
