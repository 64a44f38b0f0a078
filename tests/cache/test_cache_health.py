"""Cache files that the code does not control: damaged by hand or by a copy cut short, a full disk, a directory that
cannot be written (fluxflow/cache/health.py). Each used to end a step with a traceback (or, for the full disk, a
SIGBUS without a word); now a damaged cache is computed again and the others are one line."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest
import torch
from cache_fixtures import flow_setup
from helpers_tiny import one_torch_thread

from fluxflow.cache.health import CacheDirUnusable
from fluxflow.errors import DiskFullError, is_retryable

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FLOW = {"train_diff": True}  # both caches


def _truncate(path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _all_rows(data) -> tuple[torch.Tensor, list[str]]:
    items = [data.latent_cache[i] for i in range(len(data.latent_cache))]
    return torch.stack([m for m, _ in items]), [c for _, c in items]


@pytest.mark.parametrize("damage", ["truncated mean", "garbled meta", "lost captions", "truncated tokens"])
def test_a_damaged_cache_is_computed_again_and_trains_on_the_same_values(tmp_path, damage):
    _, first, _, _ = flow_setup(tmp_path, FLOW, caches=True, dataset_size=16)
    means, captions = _all_rows(first)
    latent = next((tmp_path / "latent_cache").iterdir())
    text = next((tmp_path / "text_cache").iterdir())
    if damage == "truncated mean":
        _truncate(latent / "mean.npy", 200)  # a copy cut short: numpy's "mmap length is greater than file size"
    elif damage == "garbled meta":
        (latent / "meta.json").write_text("{not json")
    elif damage == "lost captions":
        (latent / "captions.jsonl").unlink()  # was a KeyError when the loader reached a row
    else:
        _truncate(text / "tokens.npy", 300)

    said: list[str] = []
    trainer, again, _, _ = flow_setup(tmp_path, FLOW, caches=True, dataset_size=16, said=said)

    damaged = latent if damage != "truncated tokens" else text
    assert any(f"{damaged} is damaged" in line and "computing it again" in line for line in said), said
    got_means, got_captions = _all_rows(again)
    torch.testing.assert_close(got_means, means, rtol=0, atol=0)
    assert got_captions == captions
    tokens, _, _ = trainer.text_cache.features(captions[:2], torch.device("cpu"))
    assert tokens.shape[0] == 2


def test_a_full_disk_is_one_line_naming_the_cache_and_its_size_before_any_row_is_written(tmp_path, monkeypatch):
    """Sparse memory-mapped files on a full disk died with SIGBUS when a page was written back; the blocks are now
    allocated first (posix_fallocate), so ENOSPC comes as an error there."""
    if not hasattr(os, "posix_fallocate"):
        pytest.skip("no posix_fallocate on this platform: the files stay sparse")
    calls: list[int] = []

    def full(fd: int, offset: int, length: int) -> None:
        calls.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(DiskFullError, match=r"cache .*latent_cache/\w+: no space for its [\d.]+ KiB") as error:
        flow_setup(tmp_path, FLOW, caches=True, dataset_size=16)
    assert calls and not is_retryable(error.value)
    (latent,) = (tmp_path / "latent_cache").iterdir()
    assert not np.load(latent / "filled.npy").any()  # nothing computed into a file that could not hold it

    monkeypatch.undo()  # space freed: the same cache is filled
    _, data, _, _ = flow_setup(tmp_path, FLOW, caches=True, dataset_size=16)
    assert data.latent_cache.store.filled().all()


def test_a_cache_directory_that_cannot_be_written_is_one_line_saying_what_to_do(tmp_path):
    # A file where latent_cache/ should be: as good as a read-only mount for mkdir, and it works when run as root.
    (tmp_path / "latent_cache").write_text("not a directory")
    with pytest.raises(CacheDirUnusable, match=r"latent_cache/\w+: cannot write there .*set output.cache_dir") as error:
        flow_setup(tmp_path, FLOW, caches=True, dataset_size=16)
    assert not is_retryable(error.value)


def test_the_computing_and_reusing_lines_say_how_large_the_cache_is(tmp_path):
    said: list[str] = []
    _, data, _, _ = flow_setup(tmp_path, FLOW, caches=True, dataset_size=16, said=said)
    store = data.latent_cache.store
    # 16 rows of a float32 mean and a float16 log-variance of [4, 4, 4], and one bool each: 6,160 bytes
    assert store.nbytes() == 16 * (4 * 64 + 2 * 64 + 1)
    assert any("Latent cache of step flow: computing 16 rows" in line and "6.0 KiB on disk for all its 16 rows" in line
               for line in said), said
    flow_setup(tmp_path, FLOW, caches=True, dataset_size=16, said=said)
    assert any("Latent cache of step flow: reusing" in line and "(16 rows; 6.0 KiB on disk)" in line
               for line in said), said


def test_a_count_of_one_row_reads_singular(tmp_path, monkeypatch):
    """Were "computing 1 rows", "(1 rows; ...)" and "1 computed rows have no line in captions.jsonl"."""
    from types import SimpleNamespace

    import fluxflow.train.step_cache as step_cache
    from fluxflow.cache.health import damage

    said: list[str] = []
    store = SimpleNamespace(rows=1, dir=tmp_path, nbytes=lambda: 10, missing=lambda rows: np.arange(missing))
    monkeypatch.setattr(step_cache, "damage", lambda store: None)
    for missing in (1, 0):
        step_cache._ensure(store, None, "Latent", SimpleNamespace(name="flow"), said.append, build=lambda: 1)
    assert said[0] == f"Latent cache of step flow: computing 1 row in {tmp_path}; 10 B on disk for all its 1 row"
    assert said[2] == f"Latent cache of step flow: reusing {tmp_path} (1 row; 10 B on disk)"

    np.save(tmp_path / "filled.npy", np.array([False, True]))  # row 1 computed, and no caption line names it
    store = SimpleNamespace(dir=tmp_path, meta={}, all_fields=lambda: {}, path=lambda name: tmp_path / f"{name}.npy",
                            captions=lambda: {})
    (tmp_path / "meta.json").write_text("{}")
    assert damage(store) == "1 computed row has no line in captions.jsonl (row 1 first)"


def test_a_step_that_waited_while_another_process_built_the_cache_says_so_and_not_that_it_built_it(tmp_path,
                                                                                                   monkeypatch):
    """Two runs sharing cache_dir (or two branches, or torchrun ranks): the second sees rows missing, waits for the
    first's lock, then finds them filled. It said `built in 1.5 s` for a build it never did."""
    import fluxflow.train.step_cache as step_cache

    real = step_cache.build_latent_cache

    def other_process_first(*args, **kwargs):
        real(*args, **kwargs)  # the other process, holding the lock while this one waits
        return real(*args, **kwargs)

    monkeypatch.setattr(step_cache, "build_latent_cache", other_process_first)
    said: list[str] = []
    flow_setup(tmp_path, FLOW, caches=True, dataset_size=16, said=said)
    latent = [line for line in said if line.startswith("Latent cache")]
    assert "another step or process computed it meanwhile" in latent[-1], said
    assert not any("built in" in line for line in latent), said


def test_each_cache_records_which_runs_and_steps_used_it(tmp_path):
    """Nothing deletes old caches; with cache_dir shared by runs, used_by.jsonl is how a user tells whose they are."""
    import json

    flow_setup(tmp_path, FLOW, caches=True, dataset_size=16)
    flow_setup(tmp_path, FLOW, caches=True, dataset_size=16)
    for kind in ("latent_cache", "text_cache"):
        (directory,) = (tmp_path / kind).iterdir()
        uses = [json.loads(line) for line in (directory / "used_by.jsonl").read_text().splitlines()]
        assert [(u["output"], u["step"]) for u in uses] == [(str(tmp_path), "flow")] * 2
        assert all(u["time"].endswith("Z") for u in uses)


def test_a_cache_whose_use_cannot_be_recorded_is_read_all_the_same(tmp_path):
    flow_setup(tmp_path, FLOW, caches=True, dataset_size=16)
    (directory,) = (tmp_path / "latent_cache").iterdir()
    (directory / "used_by.jsonl").unlink()
    (directory / "used_by.jsonl").mkdir()  # as unwritable as a read-only mount, for any user
    said: list[str] = []
    _, data, _, _ = flow_setup(tmp_path, FLOW, caches=True, dataset_size=16, said=said)
    assert any("Latent cache of step flow: reusing" in line for line in said)
    assert data.latent_cache.store.filled().all()


def test_a_disk_that_fills_up_while_captions_are_written_is_the_same_one_line(tmp_path, monkeypatch):
    """The fields' blocks are reserved, but captions.jsonl grows row by row: its ENOSPC was a bare
    `[Errno 28] No space left on device` without the cache's directory."""
    from fluxflow.cache import store

    def full(self, rows, values, captions):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.CacheWriter, "write", full)
    with pytest.raises(DiskFullError, match=r"cache .*latent_cache/\w+: no space .*free space there"):
        flow_setup(tmp_path, FLOW, caches=True, dataset_size=16)
