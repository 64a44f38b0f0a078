"""One torchrun rank of tests/runtime/test_data_parallel.py (gloo, CPU): `python -m torch.distributed.run --standalone
--nproc_per_node=2 tests/ddp_worker.py MODE OUT [SHARDS]`.

- `flow`: one gradient-accumulation window (2 micro-batches) of a train_diff_full step through `Trainer.train_batch`,
  each rank on its half of every global batch; rank 0 saves the weights after the update, how many DDP all-reduces
  ran after each micro-batch, and how many explicit gradient all-reduces `optimizer_step` made.
- `webdataset`: every rank reads its part of the shards in SHARDS for one epoch (workers 0 and 2, and resumed at
  batch 1) and writes the captions it saw to OUT/rank<r>.json.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fluxflow.runtime import distributed  # noqa: E402

FLOW_STEP = {"name": "s", "n_epochs": 1, "train_diff_full": True, "gradient_accumulation_steps": 2,
             "cfg_dropout": 0.5}


def flow(out: Path) -> None:
    from helpers_tiny import shapes_batches, tiny_config
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel

    from fluxflow.train.batch_step import Window
    from fluxflow.models.latents import measure_latent_norm
    from fluxflow.train.trainer import build_trainer

    config = tiny_config("unused", [FLOW_STEP])
    trainer = build_trainer(config, config.resolved_steps()[0], None, torch.device("cpu"), max_epochs=1)
    global_batches = shapes_batches(config, 2)
    trainer.set_latent_norm(measure_latent_norm(trainer.ctx.latent_encoder, global_batches[0][0]))
    reduces = [0]

    def counted(state, bucket):
        reduces[0] += 1
        return allreduce_hook(state, bucket)

    wrapped = sorted(n for n, m in trainer.ctx.models.items() if isinstance(m, DistributedDataParallel))
    for name in wrapped:
        trainer.ctx.models[name].register_comm_hook(None, counted)
    explicit = [0]
    average = distributed.average_gradients

    def counted_average(*args):
        explicit[0] += 1
        return average(*args)

    distributed.average_gradients = counted_average
    after_each = []
    rank, world = distributed.rank(), distributed.world_size()
    for i, (images, captions) in enumerate(global_batches):  # rank r takes items r, r + world, ... (the sampler's)
        trainer.train_batch(images[rank::world], captions[rank::world], i, 0, Window(scale=0.5, last=i == 1))
        after_each.append(reduces[0])
    if rank == 0:
        torch.save({"models": {n: trainer.models[n].state_dict() for n in ("flow_processor", "text_encoder")},
                    "wrapped": wrapped, "reduces_after_each": after_each, "explicit_all_reduces": explicit[0]},
                   out / "flow.pt")


def webdataset(out: Path, shards: str) -> None:
    from fluxflow.data import build_dataset, make_loader

    rank, world = distributed.rank(), distributed.world_size()
    cfg = SimpleNamespace(type="webdataset", urls=shards, length=None, holdout=0)
    data = build_dataset(cfg, 8, 3, "train", rank, world)

    def captions(workers: int, start: int = 0) -> list[list[str]]:
        loader = make_loader(data, 4, workers, seed=3, epoch=1, start_batch=start, rank=rank, world=world)
        return [list(batch) for _, batch in loader]

    seen = captions(0)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "batches": seen, "length": len(data), "two_workers": captions(2), "resumed": captions(0, start=1)}))


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    distributed.init_from_env(torch.device("cpu"))
    try:
        flow(out) if mode == "flow" else webdataset(out, sys.argv[3])
        dist.barrier()
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
