"""An output directory on an object store (moto's S3 server on localhost, through s3fs): what a reader can see of
a torn or failed upload, the lock object, and a bad bucket or missing credentials. The pipeline that is killed and
resumed there is in tests/storage/test_pipeline_on_s3.py."""
from __future__ import annotations

import json
import os
import socket
import time

import fsspec
import pytest
import torch
from s3_server import fresh_filesystems

from flows import cli_train
from fluxflow.checkpoints.io import load_checkpoint, sha256_file
from fluxflow.checkpoints.latest import load_latest, save_latest
from fluxflow.checkpoints.lock import RunLockedError
from fluxflow.errors import CheckpointError
from fluxflow.storage.location import StorageError
from fluxflow.storage.mirror import OutputMirror
from fluxflow.storage.store_lock import StoreLock, output_lock


def state(step: int) -> dict:
    return {"global_step": step, "models": {"m": {"w": torch.full((64, 64), float(step))}}}


def saved_and_published(mirror: OutputMirror, steps: range) -> None:
    """What a step does at each checkpoint: latest.pt written locally (the previous kept), then published."""
    latest = mirror.root / "checkpoints" / "s" / "latest.pt"
    for step in steps:
        save_latest(state(step), latest)
        mirror.publish("checkpoints/s/latest.pt", keep_previous="checkpoints/s/latest.prev.pt")


def store() -> fsspec.AbstractFileSystem:
    return fsspec.filesystem("s3")


def resumed_state(uri: str, staging, lines: list[str]) -> dict | None:
    """What a run on another node resumes from: the step's checkpoints pulled into an empty staging directory."""
    mirror = OutputMirror(uri, staging, say=lines.append)
    for rel in ("checkpoints/s/latest.pt", "checkpoints/s/latest.prev.pt"):
        mirror.pull(rel)
    return load_latest(staging / "checkpoints" / "s" / "latest.pt", say=lines.append)


def test_an_object_cut_short_on_the_store_is_never_read_and_the_previous_checkpoint_is_used(s3, tmp_path):
    uri = "s3://fluxflow/cut-short"
    saved_and_published(OutputMirror(uri, tmp_path / "node1"), range(1, 4))
    data = store().cat_file("fluxflow/cut-short/checkpoints/s/latest.pt")
    store().pipe_file("fluxflow/cut-short/checkpoints/s/latest.pt", data[: len(data) // 2])  # torn in place

    lines: list[str] = []
    resumed = resumed_state(uri, tmp_path / "node2", lines)

    assert resumed["global_step"] == 2  # latest.prev.pt: the checkpoint before the torn one
    assert any("latest.pt has sha256" in line and "(a torn or unfinished upload): not used" in line
               for line in lines), lines


def test_a_torn_latest_on_the_store_is_replaced_not_kept_as_the_previous_one(s3, tmp_path):
    uri = "s3://fluxflow/torn-replaced"
    saved_and_published(OutputMirror(uri, tmp_path / "node1"), range(1, 3))
    data = store().cat_file("fluxflow/torn-replaced/checkpoints/s/latest.pt")
    store().pipe_file("fluxflow/torn-replaced/checkpoints/s/latest.pt", data[:1000])
    node2 = OutputMirror(uri, tmp_path / "node2", say=lambda line: None)
    for rel in ("checkpoints/s/latest.pt", "checkpoints/s/latest.prev.pt"):
        node2.pull(rel)
    assert load_latest(tmp_path / "node2" / "checkpoints" / "s" / "latest.pt", say=lambda line: None)[
        "global_step"] == 1
    saved_and_published(node2, range(2, 3))  # the resumed run's next checkpoint

    lines: list[str] = []
    node3 = OutputMirror(uri, tmp_path / "node3", say=lines.append)
    assert node3.pull("checkpoints/s/latest.prev.pt") and node3.pull("checkpoints/s/latest.pt")
    assert lines == []  # both verified: the good checkpoint 1 stayed the previous one, the torn one is gone
    prev = load_checkpoint(tmp_path / "node3" / "checkpoints" / "s" / "latest.prev.pt")
    assert prev["global_step"] == 1


def test_a_failed_upload_leaves_the_previous_good_latest_in_place(s3, tmp_path, monkeypatch):
    uri = "s3://fluxflow/failed-upload"
    mirror = OutputMirror(uri, tmp_path / "node1")
    saved_and_published(mirror, range(1, 3))
    put_file = mirror.fs.put_file

    def dies_half_way(local, remote, **kwargs):  # half the bytes reach the store, then the connection drops
        data = open(local, "rb").read()
        mirror.fs.pipe_file(remote, data[: len(data) // 2])
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(mirror.fs, "put_file", dies_half_way)
    with pytest.raises(OSError, match="connection reset"):
        saved_and_published(mirror, range(3, 4))
    monkeypatch.setattr(mirror.fs, "put_file", put_file)

    keys = store().ls("fluxflow/failed-upload/checkpoints/s", detail=False, refresh=True)
    assert not [key for key in keys if ".upload-" in key]  # the half object under its temporary key is gone
    lines: list[str] = []
    assert resumed_state(uri, tmp_path / "node2", lines)["global_step"] == 2
    assert lines == []  # nothing torn was ever under a key a reader uses


def test_a_kill_between_an_object_and_its_record_falls_back_to_the_previous_checkpoint(s3, tmp_path, monkeypatch):
    uri = "s3://fluxflow/kill-before-record"
    mirror = OutputMirror(uri, tmp_path / "node1")
    saved_and_published(mirror, range(1, 3))
    pipe_file = mirror.fs.pipe_file

    def killed_before_records(path, data, **kwargs):
        if path.endswith("latest.pt.sha256"):
            raise KeyboardInterrupt  # stands in for the kill: latest.pt is the new one, its record the old one
        return pipe_file(path, data, **kwargs)

    monkeypatch.setattr(mirror.fs, "pipe_file", killed_before_records)
    with pytest.raises(KeyboardInterrupt):
        saved_and_published(mirror, range(3, 4))
    lines: list[str] = []
    assert resumed_state(uri, tmp_path / "node2", lines)["global_step"] == 2
    assert any("(a torn or unfinished upload): not used" in line for line in lines), lines


def test_a_remote_checkpoint_is_read_through_a_verified_local_copy(s3, tmp_path, monkeypatch):
    uri = "s3://fluxflow/final/checkpoints/s/final.pt"
    mirror = OutputMirror("s3://fluxflow/final", tmp_path / "node1")
    path = tmp_path / "node1" / "checkpoints" / "s" / "final.pt"
    path.parent.mkdir(parents=True)
    torch.save(state(7), path)
    digest = mirror.publish("checkpoints/s/final.pt")
    assert digest == sha256_file(path)

    assert load_checkpoint(uri, expected_sha256=digest)["global_step"] == 7
    assert load_checkpoint(uri)["global_step"] == 7  # the object's record stands in for a reference's hash
    data = store().cat_file(uri)
    store().pipe_file(uri, data[:-100])
    assert load_checkpoint(uri, expected_sha256=digest)["global_step"] == 7  # the good copy, from the local cache
    monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(tmp_path / "another-node"))
    with pytest.raises(CheckpointError, match="a torn or unfinished upload"):
        load_checkpoint(uri, expected_sha256=digest)


def test_a_checkpoint_in_a_bucket_that_does_not_exist_says_so(s3):
    """Was "checkpoint not found: s3://no-such-bucket/...", as for a missing object (s3fs's FileNotFoundError)."""
    with pytest.raises(StorageError) as raised:
        load_checkpoint("s3://no-such-bucket/run/checkpoints/flow/final.pt")
    assert str(raised.value) == ("s3://no-such-bucket/run/checkpoints/flow/final.pt: the bucket 'no-such-bucket' does "
                                 "not exist; create it or correct the URI")
    with pytest.raises(CheckpointError, match="checkpoint not found: s3://fluxflow/nothing/final.pt"):
        load_checkpoint("s3://fluxflow/nothing/final.pt")  # the bucket is there: the object is not


def test_a_second_run_on_the_same_store_output_is_refused_naming_the_holder(s3):
    with StoreLock("s3://fluxflow/locked", say=lambda line: None):
        held = f"s3://fluxflow/locked is in use by another run \\(pid {os.getpid()} "
        with pytest.raises(RunLockedError, match=held):
            StoreLock("s3://fluxflow/locked", say=lambda line: None).acquire()
    assert not store().exists("fluxflow/locked/.lock")  # released: the next run takes it at once
    with output_lock("s3://fluxflow/locked", say=lambda line: None):
        pass


def test_the_lock_of_a_killed_run_is_taken_over_saying_why(s3):
    dead = {"host": socket.gethostname(), "pid": 2 ** 22 + 1, "token": "x", "heartbeat": 0}  # no such pid
    store().pipe_file("fluxflow/killed/.lock", json.dumps(dead).encode())
    lines: list[str] = []
    with StoreLock("s3://fluxflow/killed", say=lines.append):
        holder = json.loads(store().cat_file("fluxflow/killed/.lock"))
        assert holder["pid"] == os.getpid()
    assert lines == [f"Took over the lock s3://fluxflow/killed/.lock: its holder, pid {dead['pid']} of this host, is "
                     "no longer running"]


def test_a_lock_of_another_host_is_held_while_its_heartbeat_is_fresh_and_taken_over_when_it_is_old(s3):
    from fluxflow.storage.store_lock import LEASE_S

    def held_by_another_host(heartbeat: float) -> None:
        record = {"host": "another-host", "pid": os.getpid(), "token": "x", "heartbeat": heartbeat}
        store().pipe_file("fluxflow/leased/.lock", json.dumps(record).encode())

    held_by_another_host(time.time() - 10)
    with pytest.raises(RunLockedError, match=f"in use by another run \\(pid {os.getpid()} on another-host"):
        StoreLock("s3://fluxflow/leased", say=lambda line: None).acquire()
    held_by_another_host(time.time() - LEASE_S - 60)
    lines: list[str] = []
    with StoreLock("s3://fluxflow/leased", say=lines.append):
        pass
    assert len(lines) == 1 and f"pid {os.getpid()} on another-host) last renewed it 2" in lines[0]


def test_of_two_runs_taking_over_a_stale_lock_only_one_gets_it(s3, monkeypatch):
    from fluxflow.storage import store_lock

    dead = {"host": socket.gethostname(), "pid": 2 ** 22 + 1, "token": "x", "heartbeat": 0}
    store().pipe_file("fluxflow/race/.lock", json.dumps(dead).encode())
    other = StoreLock("s3://fluxflow/race", say=lambda line: None)
    read = store_lock._read

    def the_other_run_takes_it_meanwhile(fs, key):  # between this run's look at the lock and its write
        found = read(fs, key)
        fs.pipe_file(key, other._record())
        return found

    monkeypatch.setattr(store_lock, "_read", the_other_run_takes_it_meanwhile)
    with pytest.raises(RunLockedError, match="was taken by another run while this one replaced its stale lock"):
        StoreLock("s3://fluxflow/race", say=lambda line: None).acquire()
    assert json.loads(store().cat_file("fluxflow/race/.lock"))["token"] == other.token


VALID = "training:\n  pipeline:\n    steps: [{name: a, n_epochs: 1, train_vae: true}]\n"


@pytest.fixture
def no_flow(monkeypatch):
    """cli_train up to the flow, which must not start."""
    monkeypatch.setattr(cli_train, "start_temporary_server", lambda keep=False: None)
    monkeypatch.setattr(cli_train, "train", lambda args: pytest.fail("the flow started"))


def test_a_bucket_that_does_not_exist_is_one_line_and_exit_2(s3, tmp_path, no_flow, capsys):
    (tmp_path / "c.yaml").write_text(VALID)
    code = cli_train.main(["--config", str(tmp_path / "c.yaml"), "--output-dir", "s3://no-such-bucket/run",
                           "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == ["❌ s3://no-such-bucket/run: the bucket 'no-such-bucket' does not exist (The "
                                        "specified bucket does not exist); create it or correct the URI"]


def test_missing_credentials_are_one_line_and_exit_2(s3, tmp_path, no_flow, capsys, monkeypatch):
    (tmp_path / "c.yaml").write_text(VALID)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    fresh_filesystems()
    try:
        code = cli_train.main(["--config", str(tmp_path / "c.yaml"), "--output-dir", "s3://fluxflow/run", "--quiet"])
    finally:
        fresh_filesystems()
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == ["❌ s3://fluxflow/run: no credentials for the object store (Unable to locate "
                                        "credentials); set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                                        "or the equivalent of the store"]


def test_a_store_error_is_not_retried(s3):
    from fluxflow.errors import is_retryable

    assert not is_retryable(StorageError("s3://x: the bucket 'x' does not exist"))



def test_the_temporary_objects_of_a_killed_upload_are_removed_and_only_the_steps_own(s3, tmp_path):
    mirror = OutputMirror("s3://fluxflow/leftovers", tmp_path / "node1")
    for name in ("training_metrics_a.jsonl.upload-1a2b", "training_metrics_b.jsonl.upload-3c4d"):
        store().pipe_file(f"fluxflow/leftovers/graph/{name}", b"half")
    assert mirror.remove_unfinished_uploads("graph", "training_metrics_a.jsonl") == [
        "fluxflow/leftovers/graph/training_metrics_a.jsonl.upload-1a2b"]
    assert store().ls("fluxflow/leftovers/graph", detail=False, refresh=True) == [
        "fluxflow/leftovers/graph/training_metrics_b.jsonl.upload-3c4d"]  # step b may be uploading it now


def test_a_failed_checkpoint_upload_mid_step_is_one_line_and_training_goes_on(s3, tmp_path, monkeypatch):
    from helpers_tiny import tiny_config

    from fluxflow.checkpoints.step_files import plan_step

    monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(tmp_path / "node"))
    files = plan_step(tiny_config("s3://fluxflow/upload-fails"), "warm")
    save_latest(state(1), files.latest)

    def unreachable(*args, **kwargs):
        raise OSError("uploading to s3://fluxflow/upload-fails: EndpointConnectionError: could not connect")

    monkeypatch.setattr(files.remote, "publish", unreachable)
    lines: list[str] = []
    files.publish_latest(say=lines.append)  # returns: the step trains on, the next save tries again
    assert lines == ["⚠️  could not upload latest.pt of step warm to s3://fluxflow/upload-fails (uploading to "
                     "s3://fluxflow/upload-fails: EndpointConnectionError: could not connect); the store keeps its "
                     "previous checkpoint, the next save tries again"]
    with pytest.raises(OSError, match="could not connect"):  # the step's end must reach the store
        files.publish_final()


def test_files_of_another_key_are_set_aside_on_the_store_and_the_line_names_the_store(s3, tmp_path, monkeypatch):
    """The store is where the output lives: "previous files moved to" named the node's staging copy instead."""
    from helpers_tiny import tiny_config

    from fluxflow.checkpoints.step_files import plan_step

    monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(tmp_path / "node"))
    files = plan_step(tiny_config("s3://fluxflow/set-aside"), "warm")
    save_latest({**state(1), "pipeline_metadata": {"step_key": "0123456789abcdef"}}, files.latest)
    files.publish_latest()
    lines: list[str] = []
    files.set_aside_stale(say=lines.append)
    moved = "s3://fluxflow/set-aside/checkpoints/warm/superseded/0123456789abcdef"
    assert len(lines) == 1 and lines[0].endswith(f"; previous files moved to {moved}"), lines
    assert store().exists(f"{moved.removeprefix('s3://')}/latest.pt")
