"""One torchrun rank of tests/train/test_accumulation.py's distributed case: two micro-batches of a global batch of 8
(4 rows per rank), posterior noise off, one SGD update; rank 0 saves the VAE weights and the all-reduce count."""
import sys
from pathlib import Path

import torch

TESTS = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(TESTS), str(TESTS / "train")]  # helpers_tiny; tests/train/test_accumulation.py
from test_accumulation import vae_trainer  # noqa: E402

import fluxflow.train.batch_step as batch_step  # noqa: E402
from fluxflow.runtime import distributed  # noqa: E402
from fluxflow.train.batch_step import Window  # noqa: E402
from helpers_tiny import shapes_batches  # noqa: E402


def main(out: str) -> None:
    distributed.init_from_env(torch.device("cpu"))
    rank, world = distributed.rank(), distributed.world_size()
    batch_step.sample_latent = lambda mean, logvar, generator: mean
    reductions = []
    real_average = distributed.average_gradients

    def counting(optimizer, finite):
        reductions.append(1)
        return real_average(optimizer, finite)

    distributed.average_gradients = counting
    trainer, config = vae_trainer(batch_size=8, accumulation=2)
    images = torch.cat([batch[0] for batch in shapes_batches(config, 2)])  # the 16 images of one update
    for micro in range(2):
        rows = images[8 * micro: 8 * micro + 8][rank::world]  # this rank's slice of the global micro-batch
        trainer.train_batch(rows, [""] * len(rows), global_step=micro, update=0,
                            window=Window(scale=0.5, last=micro == 1))
    if rank == 0:
        torch.save({"models": {n: trainer.models[n].state_dict() for n in ("compressor", "expander")},
                    "reductions": len(reductions)}, out)


if __name__ == "__main__":
    main(sys.argv[1])
