"""Checkpoint writes and reads under faults: a torn latest.pt, a full disk, a write that loses its tail, a pickle
that would run code. The runs that resume through these are in tests/train/test_runner_resume.py and
tests/train/test_step_faults.py."""
from __future__ import annotations

import errno
import os

import pytest
import torch

from fluxflow.checkpoints import atomic_file
from fluxflow.checkpoints.io import load_checkpoint, sha256_file
from fluxflow.checkpoints.latest import load_latest, previous_of, save_latest
from fluxflow.errors import CheckpointError, DataError, DiskFullError, is_retryable


def state(step: int) -> dict:
    return {"global_step": step, "models": {"m": {"w": torch.full((64, 64), float(step))}}}


def tear(path) -> None:
    """Cut a file to half its size, as a filesystem without atomic rename can leave it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_save_keeps_the_checkpoint_it_replaces_as_latest_prev(tmp_path):
    latest = tmp_path / "latest.pt"
    save_latest(state(1), latest)
    assert not previous_of(latest).exists()
    save_latest(state(2), latest)
    assert previous_of(latest).name == "latest.prev.pt"
    assert load_checkpoint(latest)["global_step"] == 2
    assert load_checkpoint(previous_of(latest))["global_step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.prev.pt", "latest.pt"]


def test_a_torn_latest_falls_back_to_the_previous_one_saying_so(tmp_path):
    latest = tmp_path / "latest.pt"
    save_latest(state(1), latest)
    save_latest(state(2), latest)
    tear(latest)
    said: list[str] = []
    assert load_latest(latest, say=said.append)["global_step"] == 1
    assert len(said) == 1
    assert "latest.pt cannot be used" in said[0] and str(previous_of(latest)) in said[0]
    assert "truncated" in said[0]


def test_a_torn_latest_is_replaced_not_kept_as_the_previous_one(tmp_path):
    latest = tmp_path / "latest.pt"
    save_latest(state(1), latest)
    save_latest(state(2), latest)
    tear(latest)
    save_latest(state(3), latest)  # the good step-1 checkpoint stays the fallback
    assert load_checkpoint(previous_of(latest))["global_step"] == 1


@pytest.mark.parametrize("checkpoints", [1, 2])  # a torn first checkpoint (nothing before it); both torn
def test_when_no_checkpoint_can_be_read_they_are_kept_aside_and_the_step_starts_over(tmp_path, checkpoints):
    latest = tmp_path / "latest.pt"
    for step in range(1, checkpoints + 1):
        save_latest(state(step), latest)
    torn = [latest, previous_of(latest)][:checkpoints]
    for path in torn:
        tear(path)
    contents = {path.name: path.read_bytes() for path in torn}
    said: list[str] = []
    assert load_latest(latest, say=said.append) is None  # the step starts from its input
    assert not latest.exists() and not previous_of(latest).exists()
    [kept] = (tmp_path / "corrupt").iterdir()
    assert {path.name: path.read_bytes() for path in kept.iterdir()} == contents  # the evidence, unchanged
    assert len(said) == 1 and "\n" not in said[0]
    assert said[0].startswith(f"No checkpoint of this step can be used (checkpoint {latest} is corrupt, truncated")
    assert (f"checkpoint {previous_of(latest)} is corrupt" if checkpoints == 2 else "latest.prev.pt is missing") \
        in said[0]
    assert said[0].endswith(f"moved to {kept} as evidence. Lost: the batches trained since the step's start, which "
                            "it trains again from its input")
    assert load_latest(latest) is None  # and the next run finds nothing to resume: a fresh start


def test_a_rank_that_may_not_move_files_leaves_them_where_they_are(tmp_path):
    latest = tmp_path / "latest.pt"
    save_latest(state(1), latest)
    tear(latest)
    assert load_latest(latest, say=lambda line: None, set_aside=False) is None
    assert latest.exists() and not (tmp_path / "corrupt").exists()


def test_no_checkpoint_at_all_is_a_fresh_start(tmp_path):
    assert load_latest(tmp_path / "latest.pt") is None


def full_disk_after(n_bytes: int):
    """A temp-file opener whose writes fail with ENOSPC once `n_bytes` were written, as on a filling disk."""

    class FillingFile:
        def __init__(self, fd):
            self.file, self.left = os.fdopen(fd, "wb"), n_bytes

        def write(self, data):
            if len(data) > self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            self.left -= len(data)
            return self.file.write(data)

        def __getattr__(self, name):
            return getattr(self.file, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    return FillingFile


def test_a_full_disk_during_a_save_is_one_line_naming_the_file_and_the_previous_stays(tmp_path, monkeypatch):
    latest = tmp_path / "latest.pt"
    save_latest(state(1), latest)
    good = sha256_file(latest)
    monkeypatch.setattr(atomic_file, "_open_temp", full_disk_after(1000))
    with pytest.raises(DiskFullError) as err:
        save_latest(state(2), latest)
    message = str(err.value)
    assert message == (f"cannot write {latest}: the disk is full (No space left on device on the filesystem of "
                       f"{tmp_path}); the previous file is intact: free space there, then run the same command again")
    assert "enforce fail" not in message
    assert not is_retryable(err.value)
    assert sha256_file(latest) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]  # no temp file, nothing rotated


def test_a_write_that_loses_its_tail_is_caught_before_it_replaces_anything(tmp_path, monkeypatch):
    latest = tmp_path / "latest.pt"
    save_latest(state(1), latest)
    good = sha256_file(latest)

    def short_file(fd):  # reports every byte as written but keeps only the first 2 KiB
        file = os.fdopen(fd, "wb")
        real_write, kept = file.write, [0]

        def write(data):
            room = max(0, 2048 - kept[0])
            kept[0] += min(room, len(data))
            real_write(bytes(data[:room]))
            return len(data)

        file.write = write
        return file

    monkeypatch.setattr(atomic_file, "_open_temp", short_file)
    with pytest.raises(CheckpointError, match="could not write checkpoint .*latest.pt"):
        save_latest(state(2), latest)
    assert sha256_file(latest) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.pt"]


class RunsCode:
    """A `__reduce__` payload: unpickling it calls a function (here: creates a file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickle_that_would_run_code_is_refused_with_the_projects_message_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pt"
    torch.save({"models": {}, "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} refused: contains Python objects that would run code when loaded")
    assert "posix.mkdir" in message  # names the object
    assert "corrupt" not in message and "weights_only" not in message
    assert not marker.exists()
    assert not is_retryable(err.value)


def _raw_pickle(payload, path):
    import pickle

    with open(path, "wb") as f:
        pickle.dump(payload, f, protocol=4)


def _legacy_torch(payload, path):
    torch.save(payload, path, _use_new_zipfile_serialization=False, pickle_protocol=4)


@pytest.mark.parametrize("write", [_raw_pickle, _legacy_torch])
def test_a_raw_pickle_that_would_run_code_is_named_as_such_and_never_runs(tmp_path, write):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "old.pt"
    write({"models": {"m": {"w": torch.zeros(2)}}, "payload": RunsCode(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} refused: it is a raw pickle (not torch's zip format) that imports "
                              "Python objects, so loading it could run code (posix.mkdir)")
    assert "corrupt" not in message and "Unsupported operand" not in message and "weights_only" not in message
    assert not marker.exists()
    assert not is_retryable(err.value)


def test_a_legacy_format_checkpoint_of_plain_tensors_is_named_and_told_how_to_resave(tmp_path):
    path = tmp_path / "old.pt"
    _legacy_torch({"models": {"m": {"w": torch.zeros(2)}}}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(f"checkpoint {path} is a raw pickle (not torch's zip format) that the safe loader "
                              "cannot read")
    assert message.endswith("re-save it with torch.save in torch's default (zip) format")


def test_a_torn_zip_checkpoint_is_still_called_corrupt(tmp_path):
    path = tmp_path / "latest.pt"
    torch.save(state(1), path)
    tear(path)
    with pytest.raises(CheckpointError, match=r"is corrupt, truncated or not a torch checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("error, retryable", [
    (RuntimeError("a bug, or a lost worker"), True),
    (ConnectionError("tracking server unreachable"), True),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (DataError("fewer items than one batch"), False),
    (CheckpointError("refused"), False),
])
def test_which_failures_a_retry_could_fix(error, retryable):
    assert is_retryable(error) is retryable
    wrapped = RuntimeError("step x failed")
    wrapped.__cause__ = error
    assert is_retryable(wrapped) is retryable  # a PipelineFailed wraps the step's error


def test_a_config_error_is_not_retryable():
    from fluxflow.config import ConfigError, ConfigIssue

    assert not is_retryable(ConfigError([ConfigIssue("x", "wrong")]))


def test_keep_previous_without_a_verify_keeps_the_file_it_replaces(tmp_path):
    # atomic_write's contract: with keep_previous the replaced file is moved there; a verify only vets it
    path, previous = tmp_path / "latest.bin", tmp_path / "latest.prev.bin"
    path.write_bytes(b"old")
    atomic_file.atomic_write(path, lambda f: f.write(b"new"), keep_previous=previous)
    assert path.read_bytes() == b"new" and previous.read_bytes() == b"old"
