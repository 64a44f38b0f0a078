"""Resumable batch order: epoch e's order is a function of (seed, e); resuming at batch b skips without loading."""
import pytest
import torch

from fluxflow.data import ResumableBatchSampler, make_loader
from fluxflow.data.shapes import ShapesDataset


def batches(n, batch_size, seed, epoch, start=0):
    sampler = ResumableBatchSampler(n, batch_size, seed)
    sampler.set_position(epoch, start)
    return list(sampler)


def test_epoch_visits_every_item_once_in_full_batches():
    full = batches(103, 8, seed=1, epoch=0)
    assert len(full) == len(ResumableBatchSampler(103, 8, 1)) == 12
    assert all(len(b) == 8 for b in full)
    flat = [i for b in full for i in b]
    assert len(set(flat)) == 96 and set(flat) <= set(range(103))


def test_resuming_at_batch_b_gives_the_rest_of_the_uninterrupted_epoch():
    full = batches(100, 4, seed=7, epoch=3)
    for b in (0, 1, 13, 24, 25):
        assert batches(100, 4, seed=7, epoch=3, start=b) == full[b:]


def test_order_depends_on_seed_and_epoch_only():
    assert batches(50, 5, seed=2, epoch=1) == batches(50, 5, seed=2, epoch=1)
    assert batches(50, 5, seed=2, epoch=1) != batches(50, 5, seed=2, epoch=2)
    assert batches(50, 5, seed=2, epoch=1) != batches(50, 5, seed=3, epoch=1)
    sampler = ResumableBatchSampler(50, 5, seed=2)
    sampler.set_position(1, 0)
    list(sampler)
    assert list(sampler) == batches(50, 5, seed=2, epoch=1), "iterating must not move the sampler on"


def test_empty_dataset_and_bad_positions():
    assert batches(0, 4, seed=0, epoch=0) == [] and batches(3, 4, seed=0, epoch=0) == []
    with pytest.raises(ValueError):
        ResumableBatchSampler(10, 4, seed=0).set_position(0, 3)  # only 2 batches in an epoch


class RecordingDataset(torch.utils.data.Dataset):
    """Shapes items, remembering which indices were loaded."""

    def __init__(self, n):
        self.inner, self.loaded = ShapesDataset(n, seed=0, img_size=8), []

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.loaded.append(i)
        return self.inner[i]


def test_loader_resume_never_loads_skipped_items_and_matches_uninterrupted_run():
    full_ds, resumed_ds = RecordingDataset(40), RecordingDataset(40)
    full = [(x, c) for x, c in make_loader(full_ds, 4, workers=0, seed=5, epoch=2, start_batch=0)]
    resumed = [(x, c) for x, c in make_loader(resumed_ds, 4, workers=0, seed=5, epoch=2, start_batch=6)]
    assert len(full) == 10 and len(resumed) == 4
    for (x_full, c_full), (x_res, c_res) in zip(full[6:], resumed):
        assert torch.equal(x_full, x_res) and c_full == c_res
    skipped = set(full_ds.loaded[:24])
    assert not skipped & set(resumed_ds.loaded), "a skipped batch was loaded (replayed) on resume"
    assert resumed_ds.loaded == full_ds.loaded[24:]


def test_loader_collates_images_and_keeps_captions_a_list():
    images, captions = next(iter(make_loader(ShapesDataset(10, 0, 8), 3, workers=0, seed=0)))
    assert images.shape == (3, 3, 8, 8)
    assert isinstance(captions, list) and len(captions) == 3 and all(isinstance(c, str) for c in captions)


def test_worker_processes_deliver_the_same_batches_in_the_same_order():
    ds = ShapesDataset(24, 0, 8)
    single = list(make_loader(ds, 4, workers=0, seed=1, epoch=0, start_batch=2))
    loader = make_loader(ds, 4, workers=2, seed=1, epoch=0, start_batch=2)
    multi = list(loader)
    assert [c for _, c in single] == [c for _, c in multi]
    assert all(torch.equal(a, b) for (a, _), (b, _) in zip(single, multi))
    loader.batch_sampler.set_position(1, 0)  # persistent workers, next epoch: the sampler moves, workers stay
    epoch_1 = [c for _, c in make_loader(ds, 4, workers=0, seed=1, epoch=1)]
    assert [c for _, c in loader] == epoch_1 and epoch_1[2:] != [c for _, c in single]


class PidCaptions(torch.utils.data.Dataset):
    """Items whose caption is the index and the id of the process that loaded it."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        import os

        return torch.zeros(1), f"{i} {os.getpid()}"


def test_a_reused_loader_keeps_its_worker_processes_and_moves_to_the_new_position():
    data = PidCaptions()
    first = make_loader(data, 4, 1, seed=5, epoch=0)
    epoch0 = [c for _, captions in first for c in captions]
    again = make_loader(data, 4, 1, seed=5, epoch=1, start_batch=1, reuse=first)
    epoch1 = [c for _, captions in again for c in captions]
    fresh = [c for _, captions in make_loader(data, 4, 0, seed=5, epoch=1, start_batch=1) for c in captions]
    assert again is first and first.prefetch_factor == 4
    assert [c.split()[0] for c in epoch1] == [c.split()[0] for c in fresh]  # the new epoch, from batch 1
    assert {c.split()[1] for c in epoch0} == {c.split()[1] for c in epoch1}  # the same worker process throughout
    assert make_loader(data, 4, 0, seed=5, reuse=first) is not first  # another worker count: a new loader


def test_auto_workers_load_in_the_training_process_without_cuda(monkeypatch):
    from fluxflow.data import resolve_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_workers("auto") == 0 and resolve_workers(3) == 3
    import os

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert resolve_workers("auto") == min(8, cores - 1)  # a spare core each, the training process keeps one
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores))  # one core per torchrun process: nothing to spare
    assert resolve_workers("auto") == 0
