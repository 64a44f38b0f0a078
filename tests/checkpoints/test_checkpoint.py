"""Checkpoint files: atomic saves, safe loads, clear errors, immutable final.pt, exact RNG resume."""
import json
import math
import random

import fsspec
import numpy as np
import pytest
import torch

from fluxflow.checkpoints import io as ckpt
from fluxflow.checkpoints.io import finalize, load_checkpoint, save_checkpoint, sha256_file
from fluxflow.checkpoints.rng_state import capture_rng_state, restore_rng_state
from fluxflow.checkpoints.ref import CheckpointRef, StepOutcome, StepResult
from fluxflow.errors import CheckpointError


def tiny_state(global_step: int = 7) -> dict:
    """A checkpoint in the original tool's layout, with real optimizer and scheduler states of a tiny model."""
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    return {
        "epoch": 2,
        "global_step": global_step,
        "models": {"compressor": model.state_dict()},
        "optimizers": {"vae": opt.state_dict()},
        "schedulers": {"vae": sched.state_dict()},
        "ema": {"compressor": {k: v.clone() for k, v in model.state_dict().items()}},
        "pipeline_metadata": {
            "current_step": 1,
            "current_step_name": "vae_gan",
            "step_start_epoch": 1,
            "current_step_epoch": 1,
            "batch": 3,
            "step_metrics": {"vae_gan": {"vae_loss": [0.5, 0.25]}},
            "step_key": "0123456789abcdef",
            "seed": 42,
            "rng": capture_rng_state(),
            "smoothing": [0.5, 0.25],
            "completed": False,
        },
    }


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


def test_save_then_load_round_trips_the_seed_layout(tmp_path):
    state = tiny_state()
    path = tmp_path / "checkpoints" / "vae_gan" / "latest.pt"
    save_checkpoint(state, path)
    loaded = load_checkpoint(path)
    assert_same(state, loaded)
    # The optimizer state loads back into a fresh optimizer (what resume does).
    model = torch.nn.Linear(3, 2)
    model.load_state_dict(loaded["models"]["compressor"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.load_state_dict(loaded["optimizers"]["vae"])
    assert opt.state_dict()["state"][0]["step"].item() == 1
    assert [p.name for p in path.parent.iterdir()] == ["latest.pt"]  # no temp files left behind


def test_save_replaces_an_existing_checkpoint(tmp_path):
    path = tmp_path / "latest.pt"
    save_checkpoint(tiny_state(global_step=1), path)
    save_checkpoint(tiny_state(global_step=2), path)
    assert load_checkpoint(path)["global_step"] == 2


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    save_checkpoint(tiny_state(global_step=5), path)
    good_hash = sha256_file(path)

    def dies_midway(obj, f):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # a BaseException, like the signal that would stop a real run

    monkeypatch.setattr(ckpt.torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tiny_state(global_step=6), path)
    monkeypatch.undo()

    assert sha256_file(path) == good_hash
    assert load_checkpoint(path)["global_step"] == 5
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # the partial temp file was removed


def test_truncated_checkpoint_raises_error_naming_the_file(tmp_path):
    path = tmp_path / "latest.pt"
    save_checkpoint(tiny_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)
    assert "corrupt" in str(err.value)


@pytest.mark.parametrize(("content", "says"), [
    (b"", "is an empty file"),
    (b"not a checkpoint at all" * 10, "is not a torch checkpoint: it starts with b'not a checkpoint', not with the zip "
                                      "archive torch.save writes")])
def test_empty_or_garbage_file_raises_error_naming_the_file(tmp_path, content, says):
    path = tmp_path / "latest.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"checkpoint {path} {says}"


def test_missing_checkpoint_raises_error_naming_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found") as err:
        load_checkpoint(tmp_path / "nope.pt")
    assert "nope.pt" in str(err.value)


class Payload:
    """Any class instance: restoring it needs arbitrary unpickling."""


def test_pickle_bearing_checkpoint_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"models": {}, "payload": Payload()}, path)  # written by someone else's torch.save, not ours
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message
    assert "refused: contains Python objects that would run code when loaded" in message
    assert "Payload" in message  # says which object needed unpickling
    assert "weights_only" not in message  # never torch's advice to turn the safe load off


@pytest.mark.parametrize("bad", [Payload(), np.float64(0.5), __import__("collections").defaultdict(list)])
def test_save_refuses_values_a_safe_load_could_not_read(tmp_path, bad):
    path = tmp_path / "latest.pt"
    with pytest.raises(CheckpointError) as err:
        save_checkpoint({"pipeline_metadata": {"smoothing": [0.1, bad]}}, path)
    assert "['pipeline_metadata']['smoothing'][1]" in str(err.value)
    assert not path.exists()


def test_sha256_file_matches_hashlib(tmp_path):
    path = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # spans several read chunks
    path.write_bytes(data)
    import hashlib

    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_finalize_copies_latest_and_returns_its_hash(tmp_path):
    latest, final = tmp_path / "latest.pt", tmp_path / "final.pt"
    save_checkpoint(tiny_state(), latest)
    digest = finalize(latest, final)
    assert digest == sha256_file(final) == sha256_file(latest)
    assert finalize(latest, final) == digest  # calling again with the same content is harmless


def test_finalize_refuses_to_overwrite_a_different_final(tmp_path):
    latest, final = tmp_path / "latest.pt", tmp_path / "final.pt"
    save_checkpoint(tiny_state(global_step=1), latest)
    first = finalize(latest, final)
    save_checkpoint(tiny_state(global_step=2), latest)
    with pytest.raises(CheckpointError, match="refusing to overwrite") as err:
        finalize(latest, final)
    assert str(final) in str(err.value)
    assert sha256_file(final) == first


def test_load_with_expected_hash_detects_a_changed_file(tmp_path):
    path = tmp_path / "final.pt"
    save_checkpoint(tiny_state(global_step=1), path)
    digest = sha256_file(path)
    assert load_checkpoint(path, expected_sha256=digest)["global_step"] == 1
    save_checkpoint(tiny_state(global_step=2), path)
    with pytest.raises(CheckpointError, match="expected"):
        load_checkpoint(path, expected_sha256=digest)


def test_checkpoints_are_read_from_fsspec_uris_and_written_only_locally(tmp_path):
    # A model_checkpoint may live on s3:// or gs:// (read through a verified local copy); writes are local.
    fs = fsspec.filesystem("memory")
    save_checkpoint(tiny_state(global_step=3), tmp_path / "start.pt")
    uri = "memory://fluxflow-test/start.pt"
    try:
        fs.put(str(tmp_path / "start.pt"), "/fluxflow-test/start.pt")
        assert load_checkpoint(uri)["global_step"] == 3
        assert sha256_file(uri) == sha256_file(tmp_path / "start.pt")
        with pytest.raises(CheckpointError, match="local or mounted directories only"):
            save_checkpoint(tiny_state(), "memory://fluxflow-test/latest.pt")
    finally:
        fs.rm("/fluxflow-test", recursive=True)


def test_rng_round_trip_reproduces_the_same_draws(tmp_path):
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    torch.rand(5), random.random(), np.random.rand(), random.gauss(0, 1)  # leave every RNG mid-stream
    path = tmp_path / "latest.pt"
    save_checkpoint({"pipeline_metadata": {"rng": capture_rng_state()}}, path)
    expected = (torch.rand(4), random.random(), random.gauss(0, 1), np.random.rand(3))

    torch.manual_seed(999)
    random.seed(999)
    np.random.seed(999)
    restore_rng_state(load_checkpoint(path)["pipeline_metadata"]["rng"])
    got = (torch.rand(4), random.random(), random.gauss(0, 1), np.random.rand(3))
    assert torch.equal(expected[0], got[0])
    assert expected[1:3] == got[1:3]
    assert np.array_equal(expected[3], got[3])


def test_checkpoint_ref_and_step_result_survive_json():
    ref = CheckpointRef("/out/checkpoints/vae/final.pt", "ab" * 32, "vae", "0123456789abcdef", 120, 3)
    result = StepResult("vae", "met", 3, {"vae_loss": 0.02}, trained=True, resumed_from=(2, 17))
    outcome = StepOutcome(ref, result)
    wire = json.loads(json.dumps(outcome.to_dict()))
    assert StepOutcome.from_dict(wire) == outcome
    ref_back, result_back = StepOutcome.from_dict(wire)
    assert result_back.resumed_from == (2, 17)
    tracked = StepOutcome(ref, result, run_id="abc", run_url="http://mlflow/#/runs/abc")  # what the task returns
    assert StepOutcome.from_dict(json.loads(json.dumps(tracked.to_dict()))) == tracked


def test_a_non_finite_final_metric_is_null_in_json_and_nan_again_after():
    """A diverged step's ref.json held `"kl_loss": NaN`, which is not JSON (JavaScript's JSON.parse refuses it)."""
    result = StepResult("vae", "epochs_done", 1, {"kl_loss": math.nan, "vae_loss": math.inf, "psnr": 9.5})
    text = json.dumps(result.to_dict(), allow_nan=False)  # strict JSON: raised before
    assert json.loads(text)["final_metrics"] == {"kl_loss": None, "vae_loss": None, "psnr": 9.5}
    back = StepResult.from_dict(json.loads(text))
    assert math.isnan(back.final_metrics["kl_loss"]) and back.final_metrics["psnr"] == 9.5


def test_checkpoint_ref_from_dict_names_missing_and_unknown_keys():
    wire = CheckpointRef("u", "s", "n", "k", 1, 1).to_dict()
    del wire["sha256"]
    wire["shaa256"] = "s"
    with pytest.raises(ValueError, match="missing sha256; unknown shaa256"):
        CheckpointRef.from_dict(wire)


def test_step_result_rejects_an_unknown_outcome():
    with pytest.raises(ValueError, match="outcome"):
        StepResult("vae", "finished", 1)
