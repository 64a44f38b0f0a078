"""The latent cache: a flow step trains from it exactly as it trains by encoding on the fly, a changed VAE or dataset
gets a new cache, and an interrupted build continues where it stopped."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from cache_fixtures import CPU, assert_trains_the_same, flow_setup
from helpers_tiny import one_torch_thread, tiny_raw

from fluxflow.models.latents import latent_norm_of_means, measure_latent_norm, posterior
from fluxflow.train.step_data import leading_inputs

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FULL = {"train_diff_full": True}  # the text encoder trains: latents from the cache, text encoded every batch


def test_a_flow_step_trains_the_same_from_the_latent_cache_as_by_encoding_on_the_fly(tmp_path):
    live, cached = assert_trains_the_same(tmp_path, FULL, dataset_size=24)
    assert cached.cached_latents and cached.text_cache is None and not live.cached_latents


def test_cached_rows_are_the_encoders_posterior_and_give_the_same_latent_normalisation(tmp_path):
    trainer, data, config, step = flow_setup(tmp_path, FULL, caches=True, dataset_size=16)
    encoder, cache = trainer.ctx.latent_encoder, data.latent_cache
    images = torch.stack([data.train_set[i][0] for i in range(len(data.train_set))])
    mean, logvar = posterior(encoder, images)  # one batch of 16; the cache was built in batches of 4
    torch.testing.assert_close(torch.stack([cache[i][0] for i in range(len(cache))]), mean, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.stack([cache.store.read("logvar", i) for i in range(len(cache))]).float(), logvar,
                               rtol=1e-3, atol=1e-3)  # float16 storage
    assert [cache[i][1] for i in range(len(cache))] == [data.train_set[i][1] for i in range(len(cache))]

    # The first flow step's measurement: the same items of epoch 0, read from the cache or encoded.
    from_cache = latent_norm_of_means(leading_inputs(data, step.batch_size, 0, 12, trainer.ctx.device))
    images_only = dataclasses.replace(data, latent_cache=None)
    from_images = measure_latent_norm(encoder, leading_inputs(images_only, step.batch_size, 0, 12, trainer.ctx.device))
    for part in ("shift", "scale"):
        torch.testing.assert_close(from_cache[part], from_images[part], rtol=1e-6, atol=1e-7)


def _changed(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    changed = {k: v.clone() for k, v in state_dict.items()}
    first = next(k for k, v in changed.items() if v.is_floating_point())
    changed[first] += 0.05
    return changed


def test_a_changed_vae_or_dataset_builds_a_new_cache_and_an_unchanged_one_is_reused(tmp_path):
    said: list[str] = []
    first, first_data, _, _ = flow_setup(tmp_path, FULL, caches=True, said=said)
    flow_setup(tmp_path, FULL, caches=True, said=said)
    state = {"models": {"compressor": _changed(first.models["compressor"].state_dict())}}
    other_vae, other_data, _, _ = flow_setup(tmp_path, FULL, caches=True, said=said, state=state)
    flow_setup(tmp_path, FULL, caches=True, said=said, dataset_size=20)

    dirs = [d.name for d in sorted((tmp_path / "latent_cache").iterdir(), key=lambda d: d.stat().st_mtime_ns)]
    assert len(dirs) == 3, said
    assert [line.split(":")[1].split()[0] for line in said if "computing" in line or "reusing" in line] == \
        ["computing", "reusing", "computing", "computing"]
    # The new cache holds the new encoder's latents.
    image = other_data.train_set[0][0][None]
    torch.testing.assert_close(other_data.latent_cache[0][0], posterior(other_vae.ctx.latent_encoder, image)[0][0])
    assert not torch.allclose(other_data.latent_cache[0][0], first_data.latent_cache[0][0])


def test_an_interrupted_build_continues_where_it_stopped_and_ends_equal_to_a_build_in_one_go(tmp_path, monkeypatch):
    import fluxflow.train.step_cache as step_cache

    monkeypatch.setattr(step_cache, "CHUNK_ROWS", 4)  # a progress mark after every batch of 4
    real, batches, interrupt = step_cache.posterior, [], [True]

    def interrupted_at_the_third_batch(encoder, images, amp_dtype=None):
        if images.shape[0] > 1:  # not the one-image probe that sizes the cache
            batches.append(images.shape[0])
            if len(batches) == 3 and interrupt:
                interrupt.clear()
                raise KeyboardInterrupt
        return real(encoder, images, amp_dtype)

    monkeypatch.setattr(step_cache, "posterior", interrupted_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        flow_setup(tmp_path / "resumed", FULL, caches=True)
    (directory,) = (tmp_path / "resumed" / "latent_cache").iterdir()
    assert np.flatnonzero(np.load(directory / "filled.npy")).tolist() == list(range(8))

    batches.clear()
    said: list[str] = []
    _, data, _, _ = flow_setup(tmp_path / "resumed", FULL, caches=True, said=said)
    assert sum(batches) == len(data.train_set) - 8  # only the rest was encoded
    assert "computing 24 rows" in said[0] and "(8 of its 32 rows already there)" in said[0]

    monkeypatch.setattr(step_cache, "posterior", real)
    flow_setup(tmp_path / "one_go", FULL, caches=True)
    (one_go,) = (tmp_path / "one_go" / "latent_cache").iterdir()
    assert one_go.name == directory.name
    for name in ("mean.npy", "logvar.npy"):
        np.testing.assert_array_equal(np.load(directory / name), np.load(one_go / name))
    assert (directory / "captions.jsonl").read_text() == (one_go / "captions.jsonl").read_text()


def test_a_stop_request_ends_a_build_at_a_progress_mark(tmp_path, monkeypatch):
    import fluxflow.train.step_cache as step_cache
    from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request, request_stop

    monkeypatch.setattr(step_cache, "CHUNK_ROWS", 4)
    request_stop()
    try:
        with pytest.raises(StepInterrupted, match="stopped after 4/32 rows"):
            flow_setup(tmp_path, FULL, caches=True)
    finally:
        clear_stop_request()


def test_a_step_computes_the_latents_of_the_items_it_reads_and_a_longer_one_adds_the_rest(tmp_path, monkeypatch):
    import fluxflow.train.step_cache as step_cache
    from fluxflow.data import make_loader

    monkeypatch.setattr(step_cache, "LATENT_NORM_IMAGES", 8)  # the normalisation reads epoch 0's first 2 batches
    said: list[str] = []
    step = {**FULL, "max_steps": 2}  # 2 batches of 4 per epoch out of 8
    _, data, config, resolved = flow_setup(tmp_path, step, caches=True, said=said, epochs=range(3, 4),
                                           dataset_size=32)
    read = {i for e in (0, 3) for b in list(make_loader(data.train_set, 4, 0, 0, e).batch_sampler)[:2] for i in b}
    filled = set(np.flatnonzero(data.latent_cache.store.filled()).tolist())
    assert filled == read  # epoch 3's batches and the latent normalisation's epoch-0 batches, nothing else
    for inputs, _ in make_loader(data.batch_source, 4, 0, 0, 3):  # the step's epoch loads only filled rows
        assert inputs.shape == (4, *data.latent_cache.store.fields["mean"][0])
        break
    with pytest.raises(IndexError, match="was not computed"):
        data.latent_cache[min(set(range(32)) - read)]

    flow_setup(tmp_path, step, caches=True, said=said, epochs=range(3, 9), dataset_size=32)
    assert f"({len(read)} of its" in said[-2]  # the rows already there are not computed again


def test_a_step_that_reuses_the_latent_cache_counts_the_unreadable_images_the_build_met(tmp_path, caplog):
    import logging

    from PIL import Image

    from fluxflow.config import load_config
    from fluxflow.data import make_loader
    from fluxflow.train.step_cache import attach_caches
    from fluxflow.train.step_data import load_step_data
    from fluxflow.train.trainer import build_trainer

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(20):
        Image.new("RGB", (16, 16), (10 * i, 0, 0)).save(photos / f"p{i:02d}.png")
    from fluxflow.data.folder import holdout_names
    held = holdout_names([f"p{i:02d}.png" for i in range(20)], 2)
    bad = [n for n in (f"p{i:02d}.png" for i in (3, 4, 11, 12, 13)) if n not in held][:3]
    for name in bad:
        (photos / name).write_bytes(b"")  # zero-byte images
    (photos / "captions.txt").write_text("".join(f"p{i:02d}.png\tcaption {i}\n" for i in range(20)))
    raw = tiny_raw(tmp_path / "out", [{"name": "flow", "n_epochs": 1, **FULL}], no_samples=True)
    raw["training"]["pipeline"]["datasets"] = {"photos": {"type": "folder", "path": str(photos),
                                                          "captions_file": "captions.txt", "holdout": 2}}
    raw["training"]["pipeline"]["default_dataset"] = "photos"
    config = load_config(raw).config
    step = config.step("flow")

    def attached(said):
        data = load_step_data(config, step, CPU)
        attach_caches(config, step, data, build_trainer(config, step, None, CPU, max_epochs=1), None, said.append)
        return data

    def epoch_count(data, source):  # skipped_samples after an epoch over `source`
        for _ in make_loader(source, step.batch_size, 0, config.training.seed):
            pass
        return data.train_set.skipped

    caplog.set_level(logging.WARNING, logger="fluxflow.data")
    on_images = load_step_data(config, step, CPU)
    expected = epoch_count(on_images, on_images.train_set)
    assert expected >= 2  # the bad items of the epoch's 16 of 18 items
    built, reused = [], []
    data = attached(built)
    assert "computing" in built[0] and epoch_count(data, data.batch_source) == expected
    caplog.clear()
    data = attached(reused)
    assert "reusing" in reused[0]
    assert epoch_count(data, data.batch_source) == expected  # was 0: the run that reused the cache counted none
    said, = [r.getMessage() for r in caplog.records]
    assert "skipping an unreadable image" in said and f"{bad[0]}: UnidentifiedImageError" in said


@pytest.mark.parametrize("stop", ["a crash", "a stop request"])
def test_a_build_stopped_part_way_keeps_the_unreadable_items_of_the_rows_it_committed(tmp_path, monkeypatch, stop):
    """They were recorded at the build's end only: rows committed before a crash (or at a stop request's commit) are
    never computed again, so a step reusing the cache never counted their unreadable images."""
    from PIL import Image

    from fluxflow.cache import store as store_module
    from fluxflow.cache.latent_cache import build_latent_cache, latent_store
    from fluxflow.data.folder import FolderDataset
    from fluxflow.runtime.stop_request import StepInterrupted

    for i in range(16):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"p{i:02d}.png")
    (tmp_path / "p02.png").write_bytes(b"")  # in the first chunk of 4 rows
    (tmp_path / "captions.txt").write_text("".join(f"p{i:02d}.png\tcaption {i}\n" for i in range(16)))
    dataset = FolderDataset(tmp_path, "captions.txt", 8, report=False)
    store = latent_store(tmp_path / "cache", {"k": 1}, len(dataset), (4, 2, 2))
    calls = []

    def encode(images):
        calls.append(len(images))
        if stop == "a crash" and len(calls) == 3:
            raise RuntimeError("killed")
        return torch.zeros(len(images), 4, 2, 2), torch.zeros(len(images), 4, 2, 2)

    if stop == "a stop request":
        monkeypatch.setattr(store_module, "stop_requested", lambda: True)
    with pytest.raises(RuntimeError if stop == "a crash" else StepInterrupted):
        build_latent_cache(store, dataset, None, encode, CPU, batch_size=4, workers=0, chunk_rows=4, desc="x")
    assert store.filled()[:4].all() and not store.filled()[12:].any()
    assert list(store.unreadable()) == [dataset.items.index(("p02.png", "caption 2"))]


def test_recording_unreadable_items_reads_the_record_once(tmp_path, monkeypatch):
    """It read and parsed unreadable.jsonl once per item found, under the cache's lock: 38 s to add 8,000 items to
    4,000 (a scraped dataset's second build)."""
    from fluxflow.cache import store as store_module
    from fluxflow.cache.latent_cache import latent_store

    store = latent_store(tmp_path / "cache", {"k": 1}, 300, (4, 2, 2))
    store.dir.mkdir(parents=True)
    store.record_unreadable({i: "bad" for i in range(100)})
    reads = []
    real = store_module._jsonl_pairs
    monkeypatch.setattr(store_module, "_jsonl_pairs", lambda path: reads.append(path) or real(path))
    store.record_unreadable({i: "bad" for i in range(50, 300)})
    assert len(reads) == 1 and len(store.unreadable()) == 300


def test_a_build_reads_each_unreadable_image_again_once_not_once_per_batch(tmp_path, monkeypatch):
    """The items met unreadable are read again to record why (FolderDataset.unreadable): once each, where every
    later batch read all of them again (batches x unreadable decodes on a large, scraped folder)."""
    from PIL import Image

    from fluxflow.cache.latent_cache import build_latent_cache, latent_store
    from fluxflow.data import folder as folder_module
    from fluxflow.data.folder import FolderDataset

    for i in range(16):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(tmp_path / f"p{i:02d}.png")
    (tmp_path / "p01.png").write_bytes(b"")  # in the first batch of 4: 3 batches follow it
    (tmp_path / "captions.txt").write_text("".join(f"p{i:02d}.png\tcaption {i}\n" for i in range(16)))
    dataset = FolderDataset(tmp_path, "captions.txt", 8, report=False)
    store = latent_store(tmp_path / "cache", {"k": 1}, len(dataset), (4, 2, 2))
    reads = []
    real = folder_module.read_image
    monkeypatch.setattr(folder_module, "read_image", lambda path, *a: reads.append(path.name) or real(path, *a))
    build_latent_cache(store, dataset, None, lambda x: (torch.zeros(len(x), 4, 2, 2),) * 2, CPU, batch_size=4,
                       workers=0, chunk_rows=4, desc="x")
    assert reads.count("p01.png") == 2  # the loader's read that failed, and the one that says why
    assert list(store.unreadable()) == [dataset.items.index(("p01.png", "caption 1"))]
