"""Data parallelism on 2 gloo ranks (torchrun, CPU): a DDP flow step equals one process on the global batch; a
webdataset is split over the ranks with every sample seen at most once per epoch; a flow step trains on a webdataset
under torchrun.

Why the equality holds, and how the reference is built: each rank draws its own noise, timesteps and CFG mask
(fluxflow/train/trainer.py batch_seed depends on the rank). DDP averages the ranks' gradients, each the mean over the
rank's half batch, so one window of 2 micro-batches on 2 ranks is, exactly, one process accumulating the 4 half
batches with a window scale of 1/4 — provided each half batch is drawn with the seed its rank used. The reference
does that with the same `train_flow_batch`.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
from helpers_tiny import shapes_batches, tiny_config
from PIL import Image

from fluxflow.runtime import distributed
from fluxflow.runtime.launch import _kill_group

pytestmark = pytest.mark.slow

WORKER = Path(__file__).resolve().parents[1] / "ddp_worker.py"
sys.path.insert(0, str(WORKER.parent))
from ddp_worker import FLOW_STEP  # noqa: E402


def torchrun(*args: str, timeout: float = 300) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER), *args]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, output[-4000:]


def single_process_window(monkeypatch) -> dict[str, torch.nn.Module]:
    """The same window in one process: the 4 half batches, each with the seed of the rank that trained it."""
    from fluxflow.train.batch_step import Window, encode_text, train_flow_batch
    from fluxflow.models.latents import measure_latent_norm, normalise_latents
    from fluxflow.train.trainer import batch_seed, build_trainer

    config = tiny_config("unused", [FLOW_STEP])
    trainer = build_trainer(config, config.resolved_steps()[0], None, torch.device("cpu"), max_epochs=1)
    global_batches = shapes_batches(config, 2)
    trainer.set_latent_norm(measure_latent_norm(trainer.ctx.latent_encoder, global_batches[0][0]))
    for i, (images, captions) in enumerate(global_batches):
        for rank in range(2):
            with monkeypatch.context() as m:  # the seed rank `rank` of 2 drew this batch with
                m.setattr(distributed, "world_size", lambda: 2)
                m.setattr(distributed, "rank", lambda rank=rank: rank)
                trainer.ctx.generator.manual_seed(batch_seed(config.training.seed, i))
            text = encode_text(trainer.ctx, *trainer.tokenize(captions[rank::2]))
            latents = normalise_latents(trainer.posterior_means(images[rank::2]), trainer.ctx.latent_norm)
            train_flow_batch(trainer.ctx, latents, text, Window(scale=0.25, last=(i, rank) == (1, 1)))
    return trainer.models


def test_a_ddp_flow_step_equals_one_process_on_the_global_batch(tmp_path, monkeypatch):
    torchrun("flow", str(tmp_path))
    ddp = torch.load(tmp_path / "flow.pt")
    assert ddp["wrapped"] == ["flow_processor", "text_encoder"]
    assert ddp["reduces_after_each"][0] == 0, "the window's first micro-batch all-reduced (no_sync not used)"
    assert ddp["reduces_after_each"][1] > 0
    assert ddp["explicit_all_reduces"] == 0, "DDP-averaged gradients were all-reduced again"
    reference = single_process_window(monkeypatch)
    for name in ("flow_processor", "text_encoder"):
        trained = reference[name].state_dict()
        for key, value in ddp["models"][name].items():
            torch.testing.assert_close(value, trained[key], rtol=1e-5, atol=1e-6, msg=f"{name}.{key}")
    assert ddp["models"]["flow_processor"]["proj_out.weight"].abs().sum() > 0  # zero at init: the update happened


def write_shards(directory: Path, sizes: list[int], caption=lambda s, i: f"shard {s} item {i}") -> str:
    for s, size in enumerate(sizes):
        with tarfile.open(directory / f"part-{s}.tar", "w") as tar:
            for i in range(size):
                png = io.BytesIO()
                Image.new("RGB", (8, 8), (30 * s, 10 * i, 0)).save(png, format="PNG")
                for ext, data in (("png", png.getvalue()), ("txt", caption(s, i).encode())):
                    info = tarfile.TarInfo(f"{s}/{i:03d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(directory / f"part-{{0..{len(sizes) - 1}}}.tar")


def test_webdataset_ranks_read_their_own_shards_and_see_each_sample_at_most_once(tmp_path):
    urls = write_shards(tmp_path, [5, 5, 5, 3])  # ranks get 10 and 8 samples: both yield 8 (4 local batches of 2)
    torchrun("webdataset", str(tmp_path), urls)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [len(r["batches"]) for r in ranks] == [4, 4] and {r["length"] for r in ranks} == {16}
    seen = [c for r in ranks for batch in r["batches"] for c in batch]
    assert len(seen) == len(set(seen)) == 16  # no sample twice in the epoch; 2 of rank 0's 10 wait for the next
    shards_of = [{c.split()[1] for batch in r["batches"] for c in batch} for r in ranks]
    assert not shards_of[0] & shards_of[1]  # each rank reads its own shards
    for r in ranks:
        assert r["two_workers"] == r["batches"] and r["resumed"] == r["batches"][1:]


def test_a_flow_step_trains_on_a_webdataset_under_torchrun(tmp_path):
    from fluxflow.config import load_config
    from fluxflow.train.pipeline import run_pipeline

    colours, shapes = ("red", "blue", "green"), ("circle", "square")  # words evaluation's feature network learns
    urls = write_shards(tmp_path, [6, 6, 6, 6], lambda s, i: f"a {colours[i % 3]} {shapes[(s + i) % 2]}")
    raw = json.loads(json.dumps(tiny_config(tmp_path / "out", [dict(FLOW_STEP, max_steps=2)], no_samples=True)
                                .model_dump(mode="json", exclude_none=True)))
    raw["training"]["distributed"] = {"nproc_per_node": 2}
    raw["training"]["pipeline"]["datasets"] = {"wds": {"type": "webdataset", "urls": urls, "holdout": 2}}
    raw["training"]["pipeline"]["default_dataset"] = "wds"
    raw["training"]["pipeline"]["steps"][0]["dataset"] = "wds"
    outcome = run_pipeline(load_config(raw).config)[0]
    assert outcome.ref.global_step == 2 and outcome.result.outcome == "epochs_done"
    records = (tmp_path / "out" / "graph" / "training_metrics_s.jsonl").read_text().splitlines()
    assert [json.loads(line)["batch"] for line in records if "flow_loss" in line][:2] == [1, 2]
