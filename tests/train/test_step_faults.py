"""Faults injected into real pipeline runs (`run_pipeline`, no orchestrator): a disk that fills up during a checkpoint
save, and a folder dataset with undecodable images and a caption line in Latin-1."""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os

import pytest
import torch
from helpers_tiny import load_weights, one_torch_thread, tiny_config, tiny_raw
from PIL import Image

from fluxflow.checkpoints import atomic_file
from fluxflow.checkpoints import io as ckpt
from fluxflow.checkpoints.io import sha256_file
from fluxflow.config import load_config
from fluxflow.data.folder import holdout_names
from fluxflow.errors import DiskFullError
from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request, request_stop
from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.pipeline_schedule import PipelineFailed
from fluxflow.train.tracking import ConsoleJsonlTracker

__all__ = ["one_torch_thread"]

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.slow]

STEP = {"name": "warm", "n_epochs": 1, "max_steps": 4, "train_vae": True}


def disk_full_from_open(n: int):
    """A temp-file opener for fluxflow/checkpoints/io.py whose n-th file (counting from 1) fills the disk after 1 KiB:
    writes then fail with ENOSPC, as on a real full filesystem."""
    opened = [0]

    def open_temp(fd: int):
        opened[0] += 1
        file = os.fdopen(fd, "wb")
        if opened[0] == n:
            real_write, room = file.write, [1024]

            def write(data):
                if len(data) > room[0]:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                room[0] -= len(data)
                return real_write(data)

            file.write = write
        return file

    return open_temp


def test_a_full_disk_during_a_checkpoint_save_is_one_clear_line_and_the_same_command_then_completes(
        tmp_path, monkeypatch, caplog):
    out = tmp_path / "out"
    config = lambda: tiny_config(out, [STEP], checkpoint_save_interval=1, no_samples=True)  # noqa: E731
    latest = out / "checkpoints" / "warm" / "latest.pt"
    saved: list[str] = []
    real_save = ckpt.save_checkpoint

    def remember(state, path, keep_previous=None):  # the bytes of every checkpoint that reached latest.pt
        real_save(state, path, keep_previous)
        saved.append(sha256_file(path))

    monkeypatch.setattr(ckpt, "save_checkpoint", remember)
    monkeypatch.setattr(atomic_file, "_open_temp", disk_full_from_open(3))  # the third save (batch 3) meets a full disk
    with pytest.raises(PipelineFailed) as err, contextlib.redirect_stdout(io.StringIO()):
        run_pipeline(config())
    cause = err.value.__cause__
    assert isinstance(cause, DiskFullError)
    assert str(cause) == (f"cannot write {latest}: the disk is full (No space left on device on the filesystem of "
                          f"{latest.parent}); the previous file is intact: free space there, then run the same "
                          "command again")
    assert "inline_container" not in str(err.value)
    failure = next(r for r in caplog.records if r.getMessage().startswith("Step warm failed"))
    assert not failure.exc_info  # no traceback around the line
    assert len(saved) == 2 and sha256_file(latest) == saved[-1]  # the previous checkpoint is intact
    assert load_weights(latest)["pipeline_metadata"]["batch"] == 2
    assert sorted(p.name for p in latest.parent.iterdir() if p.name.endswith(".tmp")) == []

    monkeypatch.undo()  # space was freed
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        outcomes = run_pipeline(config())
    assert "Resuming from checkpoint: step=1 (warm), epoch=1, batch=2" in buffer.getvalue()
    assert outcomes[0].result.outcome == "epochs_done"


N_IMAGES, CORRUPT = 40, 4


def folder_with_bad_data(root, holdout: int, spread: bool = False):
    """40 tiny PNGs; 4 of the training split are corrupt and one caption line is Latin-1. The corrupt ones are the
    first four in name order, or with `spread` every ninth: then reading one never walks on to the next (a broken
    item's stand-in is the next readable one, fluxflow/data/folder.py), and each is met in a batch of its own."""
    root.mkdir()
    names = [f"img_{i:02d}.png" for i in range(N_IMAGES)]
    held = holdout_names(names, holdout)
    training = [n for n in names if n not in held]
    corrupt = training[::9][:CORRUPT] if spread else training[:CORRUPT]
    latin1 = next(n for n in training if n not in corrupt)
    for i, name in enumerate(names):
        if name in corrupt:
            (root / name).write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder can read")
        else:
            Image.new("RGB", (20, 20), (6 * i, 255 - 6 * i, 90)).save(root / name)
    lines = b"".join((f"{name}\ta red square, number {i}\n".encode("utf-8") if name != latin1 else
                      f"{name}\tun carré rouge, numéro {i}\n".encode("latin-1")) for i, name in enumerate(names))
    (root / "captions.txt").write_bytes(lines)
    return corrupt


class RecordingTracker(ConsoleJsonlTracker):
    """The console + JSONL tracker, remembering every metrics call (what the MLflow tracker would log)."""

    def __init__(self, out):
        super().__init__(out)
        self.calls: list[tuple[dict, object]] = []

    def log_metrics(self, metrics, progress):
        self.calls.append((dict(metrics), progress))
        super().log_metrics(metrics, progress)


def test_corrupt_images_and_a_latin1_caption_are_counted_as_skipped_samples_and_the_run_completes(tmp_path):
    folder_with_bad_data(tmp_path / "photos", holdout=4)
    out = tmp_path / "out"
    raw = tiny_raw(out, [{"name": "warm", "n_epochs": 2, "train_vae": True}], no_samples=True)
    raw["training"]["workers"] = 2  # the counts are made in DataLoader worker processes
    raw["training"]["pipeline"]["datasets"] = {"photos": {"type": "folder", "path": str(tmp_path / "photos"),
                                                          "captions_file": "captions.txt", "holdout": 4}}
    raw["training"]["pipeline"]["default_dataset"] = "photos"
    tracker = RecordingTracker(out)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        outcomes = run_pipeline(load_config(raw).config, tracker=tracker)

    expected = CORRUPT + 1  # the 4 undecodable images and the repaired caption line
    batches = (N_IMAGES - 4) // 4
    epoch_ends = [line for line in buffer.getvalue().splitlines() if f"| Batch {batches}/{batches} |" in line]
    assert len(epoch_ends) == 2 and all(line.endswith(f"s/batch | skipped samples: {expected}")
                                        for line in epoch_ends), buffer.getvalue()
    mid_epoch = [line for line in buffer.getvalue().splitlines() if "| Batch 1/" in line]
    assert mid_epoch and not any("skipped samples" in line for line in mid_epoch)

    lines = [json.loads(line) for line in (out / "graph" / "training_metrics_warm.jsonl").read_text().splitlines()]
    at_epoch_end = [r["metrics"]["skipped_samples"] for r in lines
                    if r["batch"] == batches and "vae_loss" in r["metrics"]]
    assert at_epoch_end == [expected, expected]
    tracked = [m["skipped_samples"] for m, p in tracker.calls if "skipped_samples" in m]
    assert tracked == [expected, expected]
    assert outcomes[0].result.final_metrics["skipped_samples"] == expected
    assert torch.isfinite(torch.tensor(outcomes[0].result.final_metrics["vae_loss"]))


class Killed(Exception):
    """What the test raises where a kill -9 would stop the run."""


def poison_and_die(monkeypatch, poisoned: set[int], die_at: int | None):
    """Make the trainer see NaN images at the batches of global step `poisoned` (their updates are skipped as
    non-finite) and stop the run before the batch of global step `die_at`, as a kill would."""
    from fluxflow.train.trainer import Trainer

    real = getattr(Trainer.train_batch, "__wrapped__", Trainer.train_batch)  # not an earlier call's wrapper

    def train_batch(self, images, captions, global_step, *args):
        if global_step == die_at:
            raise Killed(f"killed before global step {global_step}")
        if global_step in poisoned:
            images = images * float("nan")
        return real(self, images, captions, global_step, *args)

    train_batch.__wrapped__ = real
    monkeypatch.setattr(Trainer, "train_batch", train_batch)


def test_a_resumed_step_reports_the_skipped_samples_and_updates_of_an_uninterrupted_run(tmp_path, monkeypatch):
    folder_with_bad_data(tmp_path / "photos", holdout=4, spread=True)

    def config(out):  # one epoch: what the killed run met before its checkpoint is not met again after the resume
        raw = tiny_raw(out, [{"name": "warm", "n_epochs": 1, "train_vae": True}], no_samples=True, log_interval=3,
                       checkpoint_save_interval=1)
        raw["training"]["pipeline"]["datasets"] = {"photos": {"type": "folder", "path": str(tmp_path / "photos"),
                                                              "captions_file": "captions.txt", "holdout": 4}}
        raw["training"]["pipeline"]["default_dataset"] = "photos"
        return load_config(raw).config

    def final_counts(outcomes):
        final = outcomes[0].result.final_metrics
        return final["skipped_samples"], final["skipped_updates"]

    poison_and_die(monkeypatch, poisoned={3, 4}, die_at=None)
    with contextlib.redirect_stdout(io.StringIO()):
        whole = final_counts(run_pipeline(config(tmp_path / "whole")))
    assert whole == (CORRUPT + 1, 2.0)

    out = tmp_path / "killed"
    poison_and_die(monkeypatch, poisoned={3, 4}, die_at=5)  # latest.pt holds batch 5, inside the log interval 4-6
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(PipelineFailed, match="killed before global step 5"):
        run_pipeline(config(out))
    saved = load_weights(out / "checkpoints" / "warm" / "latest.pt")["pipeline_metadata"]
    assert saved["batch"] == 5 and saved["report"]["skips"]["count"] > 1  # corrupt images met before the kill
    poison_and_die(monkeypatch, poisoned={3, 4}, die_at=None)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        resumed = run_pipeline(config(out))
    assert "Resuming from checkpoint: step=1 (warm), epoch=1, batch=5" in buffer.getvalue()
    assert final_counts(resumed) == whole

    def interval_lines(directory):  # the metrics file's line of each log interval: the same numbers in both runs
        lines = (directory / "graph" / "training_metrics_warm.jsonl").read_text().splitlines()
        return [(r["batch"], r["metrics"].get("skipped_updates")) for r in map(json.loads, lines)]

    assert interval_lines(out) == interval_lines(tmp_path / "whole")


def test_a_flow_step_whose_webdataset_has_no_caption_refuses_to_train_a_vae_step_trains(tmp_path):
    import tarfile

    from fluxflow.errors import DataError
    # `tar cf x.tar *.png *.txt`: every image a sample without its caption, every caption one without an image
    images, captions = [], []
    for i in range(12):
        png = io.BytesIO()
        Image.new("RGB", (20, 20), (20 * i, 90, 90)).save(png, format="PNG")
        images.append((f"{i:02d}.png", png.getvalue()))
        captions.append((f"{i:02d}.txt", f"a square, number {i}".encode()))
    with tarfile.open(tmp_path / "x.tar", "w") as tar:
        for name, data in images + captions:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    full = {"name": "full", "n_epochs": 1, "max_steps": 2, "train_diff_full": True}
    raw = tiny_raw(tmp_path / "out", [full], no_samples=True)
    raw["training"]["pipeline"]["datasets"] = {"wds": {"type": "webdataset", "urls": str(tmp_path / "x.tar"),
                                                       "holdout": 2}}
    raw["training"]["pipeline"]["default_dataset"] = "wds"
    with pytest.raises(PipelineFailed) as err, contextlib.redirect_stdout(io.StringIO()):
        run_pipeline(load_config(raw).config)  # was: trained on empty prompts, exit 0
    cause = err.value.__cause__  # max_steps 2: the step reads 2 batches of 4
    assert isinstance(cause, DataError) and str(cause) == (
        "step full: none of the first 8 samples of dataset 'wds' has a caption, and a flow "
        "step learns from captions; see the data warnings above (a webdataset sample's files must be adjacent in its "
        "tar) and docs/CONFIG.md")
    raw["training"]["pipeline"]["steps"] = [{"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True}]
    with contextlib.redirect_stdout(io.StringIO()):
        run_pipeline(load_config(raw).config)  # a VAE step needs no caption


class StopAt(ConsoleJsonlTracker):
    """Requests a stop, as the flow does on Ctrl-C, once the given (epoch, batch) has been logged."""

    def __init__(self, out, epoch: int, batch: int):
        super().__init__(out)
        self.at = (epoch, batch)

    def log_metrics(self, metrics, progress):
        super().log_metrics(metrics, progress)
        if (progress.epoch, progress.batch) == self.at:
            request_stop()


def add_images(root, first: int, n: int) -> None:
    """Images img_{first}.png ... and their caption lines, appended to captions.txt."""
    with (root / "captions.txt").open("a") as captions:
        for i in range(first, first + n):
            Image.new("RGB", (20, 20), (6 * i % 256, 90, 255 - 6 * i % 256)).save(root / f"img_{i:02d}.png")
            captions.write(f"img_{i:02d}.png\ta red square, number {i}\n")


def stopped_at(config, out, epoch: int, batch: int) -> None:
    """Run `config` until the stop requested at `epoch`, `batch` (StopAt) interrupts its step."""
    clear_stop_request()
    try:
        with contextlib.redirect_stdout(io.StringIO()), \
                pytest.raises(StepInterrupted, match=f"epoch {epoch}, batch {batch}"):
            run_pipeline(config, tracker=StopAt(out, epoch, batch))
    finally:
        clear_stop_request()


def test_images_added_while_a_step_is_interrupted_set_its_latest_pt_aside_and_it_trains_again_from_its_start(
        tmp_path):
    """A resume replays the epoch's shuffle of the items it was saved with: of 40 items instead of 32, part of the
    epoch trained twice, part not at all, and the held-out split moved; it resumed without a word."""
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "captions.txt").write_text("")
    add_images(photos, 0, 36)  # 32 training images (holdout 4): 8 batches of 4

    def config(out):
        raw = tiny_raw(out, [{"name": "vae", "n_epochs": 3, "train_vae": True}], no_samples=True,
                       checkpoint_save_interval=4)
        raw["training"]["pipeline"]["datasets"] = {"photos": {"type": "folder", "path": str(photos),
                                                              "captions_file": "captions.txt", "holdout": 4}}
        raw["training"]["pipeline"]["default_dataset"] = "photos"
        return load_config(raw).config

    out = tmp_path / "out"
    stopped_at(config(out), out, 2, 4)

    add_images(photos, 36, 8)
    buffer = io.StringIO()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(buffer):
        [again] = run_pipeline(config(out))
    printed = buffer.getvalue()
    assert "Resuming from checkpoint" not in printed
    key = again.ref.step_key
    assert (f"Re-running step vae: its dataset changed since latest.pt: 32 -> 40 items; previous files moved to "
            f"{out / 'checkpoints' / 'vae' / 'superseded' / key}") in printed, printed
    set_aside = load_weights(out / "checkpoints" / "vae" / "superseded" / key / "latest.pt")["pipeline_metadata"]
    assert (set_aside["current_step_epoch"], set_aside["batch"], set_aside["data_identity"]["items"]) == (1, 4, 32)

    torch.manual_seed(0)  # the same fresh weights: the step trained as in a new output directory
    with contextlib.redirect_stdout(io.StringIO()):
        [fresh] = run_pipeline(config(tmp_path / "fresh"))
    assert again.ref.global_step == fresh.ref.global_step == 3 * 10
    a, b = load_weights(again.ref.uri), load_weights(fresh.ref.uri)
    assert a["models"].keys() == b["models"].keys() and "compressor" in a["models"]
    assert all(torch.equal(a["models"][m][k], v) for m in b["models"] for k, v in b["models"][m].items())


def test_shards_regenerated_or_named_otherwise_by_a_wds_variable_train_the_step_again(tmp_path, monkeypatch):
    """A resume over regenerated shards replayed another stream without a word (the folder's listing was checked,
    shards were not); and keyed on `${N}` rather than on what $WDS_N names, a run over other shards resumed the
    interrupted step on them, or skipped the finished one."""
    from test_data_webdataset import png_bytes, write_shard

    def shards(first: int, n: int, words: str) -> None:
        for s in range(first, first + n):
            write_shard(tmp_path / f"w-{s}.tar", {f"{s}/{i}": {"png": png_bytes(20 * s + i),
                                                               "txt": f"{words} {s} {i}".encode()} for i in range(9)})

    def config(out):
        raw = tiny_raw(out, [{"name": "vae", "n_epochs": 2, "train_vae": True}], no_samples=True,
                       checkpoint_save_interval=2)
        raw["training"]["pipeline"]["datasets"] = {"wds": {"type": "webdataset", "urls": str(tmp_path / "w-${N}.tar"),
                                                           "holdout": 2}}
        raw["training"]["pipeline"]["default_dataset"] = "wds"
        return load_config(raw).config

    shards(0, 3, "a red square")
    monkeypatch.setenv("WDS_N", "{0..1}")  # 16 training samples: 4 batches of 4
    out = tmp_path / "out"
    stopped_at(config(out), out, 1, 2)

    shards(0, 2, "a blue circle")
    for s in range(2):  # written a second later, as a regeneration is
        later = (tmp_path / f"w-{s}.tar").stat().st_mtime_ns + 10**9
        os.utime(tmp_path / f"w-{s}.tar", ns=(later, later))
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        [done] = run_pipeline(config(out))
    printed = buffer.getvalue()
    assert "Resuming from checkpoint" not in printed
    assert ("Re-running step vae: its dataset changed since latest.pt: the same 2 shards, but other shard files at "
            f"their paths (sizes or modification times); previous files moved to {out / 'checkpoints' / 'vae'}"
            ) in printed, printed
    assert done.ref.global_step == 2 * 4

    monkeypatch.setenv("WDS_N", "{1..2}")
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        [again] = run_pipeline(config(out))
    printed = buffer.getvalue()
    assert "Skipping step vae" not in printed and again.ref.step_key != done.ref.step_key
    assert "Re-running step vae: its dataset changed (urls: " in printed, printed


def test_a_webdataset_of_which_no_sample_decodes_stops_the_step_instead_of_finishing_it_untrained(tmp_path):
    """Every unreadable sample is replaced by a readable one of its batch; with none readable the epoch had no batch,
    and the step "finished" after 0 batches (global_step 0, exit 0), its untrained checkpoint handed to later steps."""
    import tarfile

    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(6):
            for ext, data in (("png", b"junk"), ("txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(f"s{i}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    raw = tiny_raw(tmp_path / "out", [{"name": "warm", "n_epochs": 1, "train_vae": True, "batch_size": 2}],
                   no_samples=True)
    raw["training"]["pipeline"]["datasets"] = {"mine": {"type": "webdataset", "urls": str(shard), "holdout": 0}}
    raw["training"]["pipeline"]["default_dataset"] = "mine"

    with pytest.raises(PipelineFailed) as failed:
        run_pipeline(load_config(raw).config)
    assert str(failed.value.__cause__) == (
        "step warm: no sample of dataset 'mine' could be read in epoch 1, so nothing was trained (the warnings above "
        "name the first unreadable one)")
    assert not (tmp_path / "out" / "checkpoints" / "warm" / "final.pt").exists()
