"""Entry point of each torchrun rank: `python -m torch.distributed.run ... -m fluxflow.train.distributed_step`.

Every rank runs the same `run_step`; rank 0 alone writes checkpoints, samples, the metrics file and the result.
"""
from __future__ import annotations

import argparse
import json
import sys

from fluxflow.runtime import distributed
from fluxflow.checkpoints.ref import CheckpointRef
from fluxflow.config.run_config import run_config_of
from fluxflow.train.step_run import run_step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One pipeline step on one torchrun rank (internal).")
    parser.add_argument("--config", required=True, help="JSON file with the resolved pipeline config")
    parser.add_argument("--step", required=True, help="name of the step to run")
    parser.add_argument("--parent", required=True, help="JSON file with the parent CheckpointRef (or null)")
    parser.add_argument("--result", required=True, help="where rank 0 writes the StepOutcome JSON")
    args = parser.parse_args(argv)
    with open(args.config) as f:
        config = run_config_of(json.load(f))  # resolved by the caller (fluxflow/runtime/launch.py)
    with open(args.parent) as f:
        parent = json.load(f)
    outcome = run_step(config, args.step, CheckpointRef.from_dict(parent) if parent else None)
    if distributed.is_main():
        with open(args.result, "w") as f:
            json.dump(outcome.to_dict(), f)
    if distributed.active():
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
