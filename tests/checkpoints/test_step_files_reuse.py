"""What a re-run does with a step's files when the user iterates on a config in one output directory: a finished
step is found where its files are now, and files set aside by an earlier config come back when that config does.

The files are made by hand (a ref.json and a stand-in final.pt): no training, no torch.
"""
from __future__ import annotations

import json
import re

import pytest

from helpers_tiny import VAE_STEP, tiny_config, tiny_raw

from fluxflow.checkpoints.step_files import plan_step
from fluxflow.config import load_config


def _finished(directory, key: str, body: bytes, uri: str = "elsewhere/final.pt") -> None:
    """A finished step's files of `key` in `directory`: final.pt holding `body`, and its ref.json."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "final.pt").write_bytes(body)
    ref = {"uri": uri, "sha256": "0" * 64, "step_name": "warm", "step_key": key, "global_step": 2, "epoch": 1}
    result = {"step_name": "warm", "outcome": "epochs_done", "epochs_done": 1}
    (directory / "ref.json").write_text(json.dumps({"ref": ref, "result": result, "step_config": {"lr": 1}}))


def test_a_finished_step_is_handed_on_where_its_final_pt_is_now(tmp_path):
    # Trained as `--output-dir out` from another working directory (or in a folder since moved): the ref.json's
    # path no longer opens from here, and the next step would fail to load its input.
    files = plan_step(tiny_config(tmp_path / "out", [VAE_STEP]), "warm")
    _finished(files.dir, files.key, b"weights", uri="out/checkpoints/warm/final.pt")

    ref, _ = files.completed()

    assert ref.uri == str(files.final) and ref.step_key == files.key


def test_files_of_the_current_config_set_aside_by_an_earlier_run_come_back(tmp_path, capsys):
    # lr A (trained), then lr B (A set aside, B trained), then lr A again: A's files are reused, B's set aside.
    files = plan_step(tiny_config(tmp_path / "out", [VAE_STEP]), "warm")
    _finished(files.dir / "superseded" / files.key, files.key, b"trained with A")
    (files.dir / "superseded" / files.key / files.metrics.name).write_text("A's lines\n")
    _finished(files.dir, "b" * 16, b"trained with B")
    files.metrics.parent.mkdir(parents=True)
    files.metrics.write_text("B's lines\n")

    assert files.reuse_set_aside()

    assert files.completed() is not None and files.final.read_bytes() == b"trained with A"
    assert files.metrics.read_text() == "A's lines\n"
    assert (files.dir / "superseded" / ("b" * 16) / "final.pt").read_bytes() == b"trained with B"
    assert not (files.dir / "superseded" / files.key).exists()
    printed = capsys.readouterr().out
    assert f"Reusing step warm: its final.pt for this same configuration, set aside by an earlier run, moved back " \
           f"from {files.dir / 'superseded' / files.key}" in printed


def test_nothing_comes_back_when_nothing_of_the_current_config_was_set_aside(tmp_path, capsys):
    files = plan_step(tiny_config(tmp_path / "out", [VAE_STEP]), "warm")
    _finished(files.dir, files.key, b"current")

    assert not files.reuse_set_aside()
    assert files.final.read_bytes() == b"current" and capsys.readouterr().out == ""


def test_setting_files_aside_never_replaces_files_set_aside_before(tmp_path):
    # Key B trained, set aside, trained again (its files set aside earlier were not reusable), set aside again.
    files = plan_step(tiny_config(tmp_path / "out", [VAE_STEP]), "warm")
    old = "b" * 16
    _finished(files.dir / "superseded" / old, old, b"first B")
    _finished(files.dir, old, b"second B")

    files.set_aside_stale()

    assert (files.dir / "superseded" / old / "final.pt").read_bytes() == b"first B"
    assert (files.dir / "superseded" / f"{old}.2" / "final.pt").read_bytes() == b"second B"


def _two_steps(out, warm_lr: float = 1e-3, vae_dim: int | None = None):
    warm = dict(VAE_STEP, optimization={"optimizers": {"vae": {"type": "AdamW", "lr": warm_lr}}})
    gan = {"name": "gan", "n_epochs": 1, "max_steps": 2, "train_vae": True, "gan_training": True}
    config = tiny_config(out, [warm, gan])
    if vae_dim is not None:
        config = config.model_copy(update={"model": config.model.model_copy(update={"vae_dim": vae_dim})})
    return config


def _finished_as(files, key: str) -> None:
    """Files of `key` in place, recorded as `files`' own run would write them (its config and key inputs)."""
    _finished(files.dir, key, b"weights")
    payload = json.loads(files.ref_json.read_text())
    payload.update(step_config=files.step.model_dump(mode="json"), key_inputs=files.key_inputs)
    files.ref_json.write_text(json.dumps(payload))


def test_a_step_set_aside_because_the_step_it_starts_from_changed_says_so(tmp_path, capsys):
    out = tmp_path / "out"
    before = plan_step(_two_steps(out), "gan")
    _finished_as(before, before.key)
    after = plan_step(_two_steps(out, warm_lr=3e-3), "gan")

    after.set_aside_stale()

    assert f"Re-running step gan: the step it starts from, warm, changed; previous files moved to " \
           f"{after.dir / 'superseded' / before.key}" in capsys.readouterr().out


def test_a_step_set_aside_because_the_model_changed_names_the_field(tmp_path, capsys):
    out = tmp_path / "out"
    before = plan_step(_two_steps(out), "warm")
    _finished_as(before, before.key)
    after = plan_step(_two_steps(out, vae_dim=16), "warm")

    after.set_aside_stale()

    assert "Re-running step warm: the model changed (vae_dim: 8 -> 16); previous files moved to" \
        in capsys.readouterr().out


def _finished_from(files, sha_of_input: str) -> None:
    """A finished step of `files`' own key, recorded as trained from a checkpoint whose sha256 is `sha_of_input`."""
    _finished_as(files, files.key)
    payload = json.loads(files.ref_json.read_text())
    payload["input_sha256"] = sha_of_input
    files.ref_json.write_text(json.dumps(payload))


def test_a_finished_step_trained_from_another_parent_checkpoint_is_trained_again(tmp_path, capsys):
    # Same configs, but warm's final.pt is another file than the one gan was trained from (warm trained again,
    # after its checkpoint was deleted, on a GPU or on another device): gan's weights come from the old one.
    gan = plan_step(_two_steps(tmp_path / "out"), "gan")
    _finished_from(gan, "a" * 64)
    gan.input_sha256 = "b" * 64

    assert gan.completed() is None
    gan.set_aside_stale()

    assert (gan.dir / "superseded" / gan.key / "final.pt").exists() and not gan.final.exists()
    assert f"Re-running step gan: the checkpoint it starts from (warm's final.pt) is not the one it was trained " \
           f"from (sha256 aaaaaaaaaaaa... then, bbbbbbbbbbbb... now); previous files moved to " \
           f"{gan.dir / 'superseded' / gan.key}" in capsys.readouterr().out


def test_a_finished_step_trained_from_its_parents_checkpoint_as_it_is_is_reused(tmp_path):
    gan = plan_step(_two_steps(tmp_path / "out"), "gan")
    _finished_from(gan, "a" * 64)
    gan.input_sha256 = "a" * 64

    assert gan.completed() is not None


def test_the_skipping_line_lists_a_step_only_if_trained_from_its_parents_final_pt_as_it_is(tmp_path):
    from fluxflow.train.pipeline import completed_steps

    config = _two_steps(tmp_path / "out")
    warm, gan = plan_step(config, "warm"), plan_step(config, "gan")
    _finished_as(warm, warm.key)  # its ref.json records sha256 "0" * 64
    _finished_from(gan, "0" * 64)
    assert completed_steps(config) == ["warm", "gan"]

    _finished_from(gan, "c" * 64)
    assert completed_steps(config) == ["warm"]

    warm.ref_json.unlink()  # warm trains again: whether gan is reused depends on the file it makes
    _finished_from(gan, "0" * 64)
    assert completed_steps(config) == []


def test_of_this_keys_set_aside_files_those_trained_from_the_parents_final_pt_now_come_back(tmp_path):
    # gan trained from warm's first final.pt (set aside as <key>), then from its second (set aside as <key>.2):
    # with the second one in place, <key>.2 is the one that comes back.
    out = tmp_path / "out"
    gan = plan_step(_two_steps(out), "gan")
    gan.input_sha256 = "a" * 64
    _finished_from(gan, "a" * 64)
    gan.final.write_bytes(b"from the first warm")
    gan.input_sha256 = "b" * 64
    gan.set_aside_stale()
    _finished_from(gan, "b" * 64)
    gan.final.write_bytes(b"from the second warm")
    lr_changed = plan_step(_two_steps(out, warm_lr=3e-3), "gan")
    lr_changed.set_aside_stale()

    assert gan.reuse_set_aside()

    assert gan.completed() is not None and gan.final.read_bytes() == b"from the second warm"
    assert (gan.dir / "superseded" / gan.key / "final.pt").read_bytes() == b"from the first warm"


def test_steps_finished_with_other_dataloader_workers_are_reused(tmp_path):
    # workers changes no weight (the same batches in the same order): a pipeline trained with workers 0 is not
    # trained again for workers 2, although the step keys (which must not change for finished steps) differ.
    out = tmp_path / "out"
    before = _two_steps(out)
    for name in ("warm", "gan"):
        files = plan_step(before, name)
        _finished_as(files, files.key)
        payload = json.loads(files.ref_json.read_text())
        files.ref_json.write_text(json.dumps(dict(payload, weights_key=files.weights_key)))
    more_workers = before.model_copy(update={"training": before.training.model_copy(update={"workers": 2})})
    assert [plan_step(more_workers, n).step.workers for n in ("warm", "gan")] == [2, 2]

    assert [plan_step(more_workers, n).key != plan_step(before, n).key for n in ("warm", "gan")] == [True, True]
    assert [plan_step(more_workers, n).completed() is not None for n in ("warm", "gan")] == [True, True]
    lr_changed = _two_steps(out, warm_lr=3e-3)
    assert [plan_step(lr_changed, n).completed() is None for n in ("warm", "gan")] == [True, True]


def test_the_weights_key_of_a_step_that_changed_nothing_is_the_one_earlier_releases_recorded(tmp_path):
    """Pinned (the values at 31e8637): a field that joins the weight-neutral ones must not change the weights key of
    steps that never set it (eval_interval, left out of it, changed every step's, and a step finished before lost the
    reuse of a changed `workers` or `index` once). A change here is one every user pays."""
    gan = {"name": "gan", "n_epochs": 1, "max_steps": 2, "train_vae": True, "gan_training": True}
    config = tiny_config(tmp_path / "out", [dict(VAE_STEP), gan])
    assert {n: plan_step(config, n).weights_key for n in ("warm", "gan")} == {"warm": "7c1680b0e53fc7e1",
                                                                             "gan": "361d2943de8c9667"}


def test_ref_json_records_the_key_without_the_values_that_change_no_weight(tmp_path):
    from fluxflow.checkpoints.ref import CheckpointRef, StepResult

    files = plan_step(_two_steps(tmp_path / "out"), "gan")
    files.dir.mkdir(parents=True)
    files.write_ref(CheckpointRef("u", "0" * 64, "gan", files.key, 4, 2), StepResult("gan", "epochs_done", 1))

    assert json.loads(files.ref_json.read_text())["weights_key"] == files.weights_key != files.key


def test_a_full_disk_while_ref_json_is_written_is_the_disk_full_error_and_the_step_is_not_complete(tmp_path,
                                                                                                     monkeypatch):
    """ref.json is written like a checkpoint (fluxflow/checkpoints/atomic_file.py): a full disk is the one-line
    DiskFullError naming it, no temp file stays, no ref.json says the step is done. Was a raw OSError from a
    hand-made `ref.json.tmp`, which a kill left behind for good (the clean-up removes `.*.tmp`)."""
    import errno
    import os

    from fluxflow.checkpoints import atomic_file
    from fluxflow.checkpoints.ref import CheckpointRef, StepResult
    from fluxflow.errors import DiskFullError

    def full_disk(fd):
        os.close(fd)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    files = plan_step(_two_steps(tmp_path / "out"), "gan")
    files.dir.mkdir(parents=True)
    monkeypatch.setattr(atomic_file, "_open_temp", full_disk)
    with pytest.raises(DiskFullError, match=re.escape(f"cannot write {files.ref_json}: the disk is full")):
        files.write_ref(CheckpointRef("u", "0" * 64, "gan", files.key, 4, 2), StepResult("gan", "epochs_done", 1))
    assert list(files.dir.iterdir()) == [] and files.completed() is None


@pytest.mark.parametrize("damage", [b"\xff\xfe not text", b"{}", b"[1, 2]", b'{"ref": {"sha256": "a"}}',
                                    b'{"ref": {"step_key": "k", "sha256": "a"}, "result": {}}',
                                    b'{"ref": {"uri": "u", "sha256": "a", "step_name": "gan", "step_key": ["k"], '
                                    b'"global_step": 4, "epoch": 2}, "result": {"step_name": "gan", '
                                    b'"outcome": "epochs_done", "epochs_done": 1}}'])
def test_a_damaged_ref_json_counts_as_not_finished_as_a_truncated_one_does(tmp_path, capsys, damage):
    """ref.json of bytes that are not UTF-8, or JSON of another shape: the step is not complete and its files are
    set aside, as with a ref.json cut short; was a UnicodeDecodeError / KeyError that ended the run before any step."""
    gan = plan_step(_two_steps(tmp_path / "out"), "gan")
    _finished_as(gan, gan.key)
    gan.ref_json.write_bytes(damage)
    assert gan.completed() is None and gan.completed_here_or_set_aside() is None
    gan.set_aside_stale()
    assert not gan.final.exists() and "previous files moved to" in capsys.readouterr().out
    assert (gan.dir / "superseded" / "unknown" / "final.pt").exists()  # kept, not deleted


def test_a_root_step_is_trained_again_when_its_model_checkpoint_file_is_replaced_in_place(tmp_path, capsys):
    # `model_checkpoint: start.pt` keeps its path (and so the step's key) when the file is replaced by another one.
    start = tmp_path / "start.pt"
    start.write_bytes(b"the first pretrained weights")
    config = tiny_config(tmp_path / "out", [VAE_STEP], model_checkpoint=str(start))
    warm = plan_step(config, "warm", None)
    _finished_from(warm, warm.input_sha256)
    assert warm.completed() is not None

    start.write_bytes(b"other pretrained weights, same path")
    warm = plan_step(config, "warm", None)

    assert warm.completed() is None
    warm.set_aside_stale()
    assert "Re-running step warm: the checkpoint it starts from (its model_checkpoint) is not the one it was trained " \
           "from" in capsys.readouterr().out


def test_step_folders_no_step_of_the_config_uses_are_named_at_the_start(tmp_path, capsys):
    # A step renamed (vae_gan -> gan) trains as a new step; its old folder stays, and the run says so once.
    from fluxflow.train.pipeline import announce_skipped

    config = _two_steps(tmp_path / "out")
    old = plan_step(config, "gan").dir.parent / "vae_gan"
    old.mkdir(parents=True)

    announce_skipped(config)

    assert capsys.readouterr().out == f"Not steps of this config, left as they are: {old}\n"


def test_steps_that_only_moved_in_the_file_are_reused_with_their_children(tmp_path):
    # A step's position is a label (its samples' names, the plan's "Step N"): swapping two branches in the YAML, or
    # adding one before them, trained both again ("its configuration changed (index: 2 -> 1)") and every step after.
    out = tmp_path / "out"
    warm = dict(VAE_STEP)
    one = {"name": "one", "n_epochs": 1, "max_steps": 2, "train_vae": True, "after": "warm"}
    two = {"name": "two", "n_epochs": 1, "max_steps": 2, "train_vae": True, "train_spade": True, "after": "warm"}
    child = {"name": "child", "n_epochs": 1, "max_steps": 2, "train_vae": True, "after": "one"}
    before = tiny_config(out, [warm, one, two, child])
    for name in ("warm", "one", "two", "child"):
        files = plan_step(before, name)
        _finished_as(files, files.key)
        payload = json.loads(files.ref_json.read_text())
        files.ref_json.write_text(json.dumps(dict(payload, weights_key=files.weights_key)))
    added = {"name": "added", "n_epochs": 1, "max_steps": 2, "train_vae": True, "after": "warm"}
    moved = tiny_config(out, [warm, added, two, one, child])
    assert plan_step(moved, "one").key != plan_step(before, "one").key  # finished steps' keys stay as they were
    assert [plan_step(moved, n).completed() is not None for n in ("warm", "one", "two", "child")] == [True] * 4
    assert plan_step(moved, "added").completed() is None


def test_a_changed_field_the_step_never_reads_retrains_nothing(tmp_path):
    # lambda_adv on a step without a GAN: "Re-running step warm: its configuration changed (lambda_adv: 0.5 -> 0.9)",
    # then its child, for weights equal to the last bit.
    out = tmp_path / "out"
    gan = {"name": "gan", "n_epochs": 1, "max_steps": 2, "train_vae": True, "gan_training": True}
    before = tiny_config(out, [dict(VAE_STEP, lambda_adv=0.5), gan])
    for name in ("warm", "gan"):
        files = plan_step(before, name)
        _finished_as(files, files.key)
        payload = json.loads(files.ref_json.read_text())
        files.ref_json.write_text(json.dumps(dict(payload, weights_key=files.weights_key)))
    unused = tiny_config(out, [dict(VAE_STEP, lambda_adv=0.9), gan])
    assert [plan_step(unused, n).completed() is not None for n in ("warm", "gan")] == [True, True]
    used = tiny_config(out, [dict(VAE_STEP, lambda_adv=0.5), dict(gan, lambda_adv=0.9)])  # gan reads it
    assert plan_step(used, "warm").completed() is not None and plan_step(used, "gan").completed() is None


@pytest.mark.parametrize("change", ["eval_interval", "the step's lr", "training.lr"])
def test_a_value_that_changes_no_weight_retrains_no_finished_step(tmp_path, change):
    """Asking a finished step for epoch-end evaluations (eval_interval), or changing an lr that no optimizer of the
    step takes (each sets its own; the step's lr was even warned about as having no effect), said "Re-running step
    warm: its configuration changed" and trained it and its child again, to weights equal to the last bit. An lr an
    optimizer does take still retrains."""
    out = tmp_path / "out"
    own = {"optimization": {"optimizers": {"vae": {"lr": 1e-3}}}}
    gan = {"name": "gan", "n_epochs": 1, "max_steps": 2, "train_vae": True, "gan_training": True}
    before = tiny_config(out, [dict(VAE_STEP, **own), gan])
    for name in ("warm", "gan"):
        files = plan_step(before, name)
        _finished_as(files, files.key)
        payload = json.loads(files.ref_json.read_text())
        files.ref_json.write_text(json.dumps(dict(payload, weights_key=files.weights_key)))
    if change == "eval_interval":
        after = tiny_config(out, [dict(VAE_STEP, **own, eval_interval=1), gan])
    elif change == "the step's lr":
        after = tiny_config(out, [dict(VAE_STEP, **own, lr=5e-4), gan])
    else:  # the gan step's optimizers take training.lr: it trains again
        raw = tiny_raw(out, [dict(VAE_STEP, **own), gan])
        raw["training"]["lr"] = 5e-4
        after = load_config(raw).config
    assert plan_step(after, "warm").key != plan_step(before, "warm").key  # keys of finished steps stay as they were
    reused = [plan_step(after, n).completed() is not None for n in ("warm", "gan")]
    assert reused == ([True, False] if change == "training.lr" else [True, True])


def _in_progress(files, step_key: str, input_sha256: str | None, key_inputs: dict | None = None) -> None:
    """A latest.pt of a step interrupted mid-way (no final.pt, no ref.json)."""
    from fluxflow.checkpoints.io import save_checkpoint
    from fluxflow.checkpoints.step_state import StepState

    files.dir.mkdir(parents=True, exist_ok=True)
    meta = StepState(current_step_name=files.step.name, step_key=step_key, batch=6, input_sha256=input_sha256,
                     key_inputs=key_inputs, step_config=files.step.model_dump(mode="json"))
    save_checkpoint({"pipeline_metadata": meta.to_dict()}, files.latest)


def test_an_interrupted_step_whose_input_was_replaced_starts_again_from_the_new_one(tmp_path, capsys):
    """Its latest.pt was resumed from (weights of the old input), and its ref.json then recorded the new input: the
    step kept them for good ("Skipping step ...: already complete")."""
    gan = plan_step(_two_steps(tmp_path / "out"), "gan")
    _in_progress(gan, gan.key, "a" * 64)
    gan.input_sha256 = "b" * 64
    gan.set_aside_stale()
    assert not gan.latest.exists() and (gan.dir / "superseded" / gan.key / "latest.pt").exists()
    assert "Re-running step gan: the checkpoint it starts from (warm's final.pt) is not the one it was trained from " \
           "(sha256 aaaaaaaaaaaa... then, bbbbbbbbbbbb... now)" in capsys.readouterr().out
    again = plan_step(_two_steps(tmp_path / "out2"), "gan")
    _in_progress(again, again.key, "b" * 64)
    again.input_sha256 = "b" * 64
    again.set_aside_stale()
    assert again.latest.exists()  # the same input: resumed


def test_an_interrupted_step_whose_parent_changed_says_so(tmp_path, capsys):
    """It said "its configuration or an earlier step changed", the words for files without recorded inputs."""
    out = tmp_path / "out"
    before = plan_step(_two_steps(out), "gan")
    _in_progress(before, before.key, None, key_inputs=before.key_inputs)
    after = plan_step(_two_steps(out, warm_lr=3e-3), "gan")
    after.set_aside_stale()
    assert "Re-running step gan: the step it starts from, warm, changed" in capsys.readouterr().out


def test_accepting_a_missed_threshold_reuses_the_step(tmp_path):
    """on_missed: fail -> continue, the fix after a miss, retrained the step ("its configuration changed (on_missed:
    'fail' -> 'continue')") for the same weights."""
    out = tmp_path / "out"
    gan = {"name": "gan", "n_epochs": 1, "max_steps": 2, "train_vae": True, "gan_training": True,
           "transition_on": {"mode": "loss_threshold", "metric": "vae_loss", "threshold": 0.01, "max_epochs": 2}}
    failing = tiny_config(out, [dict(VAE_STEP), dict(gan, on_missed="fail")])
    files = plan_step(failing, "gan")
    _finished_as(files, files.key)
    payload = json.loads(files.ref_json.read_text())
    files.ref_json.write_text(json.dumps(dict(payload, weights_key=files.weights_key)))
    accepting = tiny_config(out, [dict(VAE_STEP), dict(gan, on_missed="continue")])
    assert plan_step(accepting, "gan").key != files.key and plan_step(accepting, "gan").completed() is not None


def test_the_skipping_line_lists_the_steps_whose_files_come_back_from_superseded(tmp_path):
    """A config changed and changed back: "Skipping steps: warm", then "Reusing step gan ... moved back" and
    "Skipping step gan" too."""
    from fluxflow.train.pipeline import completed_steps

    config = _two_steps(tmp_path / "out")
    warm, gan = plan_step(config, "warm"), plan_step(config, "gan")
    _finished_as(warm, warm.key)  # its ref.json records sha256 "0" * 64
    _finished_from(gan, "0" * 64)
    kept = gan.dir / "superseded" / gan.key
    kept.mkdir(parents=True)
    for path in (gan.final, gan.ref_json):
        path.rename(kept / path.name)  # set aside by a run of another config, in place: nothing (or other files)
    assert completed_steps(config) == ["warm", "gan"]
    assert gan.reuse_set_aside() and gan.completed() is not None  # what the run then does


def test_n_epochs_changed_for_other_steps_retrains_no_loss_threshold_step_with_its_own_max_epochs(tmp_path):
    # `training.n_epochs: 2 -> 3` for the epoch steps: the threshold step ends by its own max_epochs and trains the same
    # weights, yet it and every step after it trained again ("its configuration changed (n_epochs: 2 -> 3)").
    out = tmp_path / "out"
    watched = dict(VAE_STEP, transition_on={"mode": "loss_threshold", "metric": "vae_loss", "threshold": 0.1,
                                            "max_epochs": 2})
    gan = {"name": "gan", "max_steps": 2, "train_vae": True, "gan_training": True}

    def config(n_epochs: int, max_epochs: int = 2):
        step = dict(watched, transition_on=dict(watched["transition_on"], max_epochs=max_epochs))
        step.pop("n_epochs")
        raw = tiny_raw(out, [step, gan])
        raw["training"]["n_epochs"] = n_epochs
        return load_config(raw).config

    before = config(n_epochs=2)
    for name in ("warm", "gan"):
        files = plan_step(before, name)
        _finished_as(files, files.key)
        payload = json.loads(files.ref_json.read_text())
        files.ref_json.write_text(json.dumps(dict(payload, weights_key=files.weights_key)))

    more = config(n_epochs=3)
    assert plan_step(more, "warm").step.n_epochs == 3 and plan_step(more, "warm").key != plan_step(before, "warm").key
    assert plan_step(more, "warm").completed() is not None
    assert plan_step(more, "gan").completed() is None  # an epoch step: 3 epochs now
    assert plan_step(config(n_epochs=2, max_epochs=3), "warm").completed() is None  # its own bound changed


def test_a_latest_pt_resumes_on_the_data_it_was_saved_with_or_one_that_did_not_record_it():
    from fluxflow.checkpoints.step_files import StepFiles
    from fluxflow.checkpoints.step_state import StepState

    folder = {"items": 32, "sha256": "a" * 64}
    assert StepFiles.data_changed(folder, dict(folder)) is None
    # An older latest.pt (no data_identity), and shapes data (None): not checked, resumed.
    assert StepState.of_checkpoint({"pipeline_metadata": {"batch": 4}}).data_identity is None
    assert StepFiles.data_changed(None, folder) is None and StepFiles.data_changed(folder, None) is None
    assert StepFiles.data_changed(folder, {"items": 40, "sha256": "b" * 64}) == (
        "its dataset changed since latest.pt: 32 -> 40 items")
    assert StepFiles.data_changed(folder, {"items": 32, "sha256": "b" * 64}) == (
        "its dataset changed since latest.pt: the same 32 items, but other files or captions listed")
    one = {"items": 1, "sha256": "c" * 64}  # were "32 -> 1 items", "the same 1 items"
    assert StepFiles.data_changed(folder, one) == "its dataset changed since latest.pt: 32 -> 1 item"
    assert StepFiles.data_changed(one, {"items": 1, "sha256": "d" * 64}) == (
        "its dataset changed since latest.pt: the same 1 item, but other files or captions listed")
    shards = {"shards": 3, "sha256": "e" * 64}  # a webdataset's: its shards, regenerated or others
    assert StepFiles.data_changed(shards, {"shards": 2, "sha256": "f" * 64}) == (
        "its dataset changed since latest.pt: 3 -> 2 shards")
    assert StepFiles.data_changed(shards, {"shards": 3, "sha256": "f" * 64}) == (
        "its dataset changed since latest.pt: the same 3 shards, but other shard files at their paths (sizes or "
        "modification times)")


def test_a_holdout_pairs_seed_that_draws_nothing_retrains_no_step_and_is_said(tmp_path):
    """A shapes dataset's holdout_pairs_seed without a count (or holdout_pairs 0) changes no item: it was accepted
    without a word and trained every step again ('its dataset changed (holdout_pairs_seed: added (5))')."""
    def config(**shapes):
        raw = tiny_raw(tmp_path / "out", [VAE_STEP])
        raw["training"]["pipeline"]["datasets"]["shapes"].update(shapes)
        return load_config(raw)

    files = plan_step(config().config, "warm")
    _finished(files.dir, files.key, b"weights")
    payload = json.loads(files.ref_json.read_text())
    files.ref_json.write_text(json.dumps(dict(payload, weights_key=files.weights_key)))
    for shapes in ({"holdout_pairs_seed": 5}, {"holdout_pairs": 0}, {"holdout_pairs": [], "holdout_pairs_seed": 1}):
        assert plan_step(config(**shapes).config, "warm").completed() is not None, shapes
    assert plan_step(config(holdout_pairs=2).config, "warm").completed() is None  # a count draws pairs: it trains
    assert config(holdout_pairs_seed=5).warnings == [
        "training.pipeline.datasets.shapes.holdout_pairs_seed: has no effect: it draws a count of holdout_pairs, and "
        "holdout_pairs sets none"]
    assert config(holdout_pairs=3, holdout_pairs_seed=5).warnings == []
