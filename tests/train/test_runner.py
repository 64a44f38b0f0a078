"""The step runner through `run_pipeline` alone (no Prefect, no MLflow) on tiny configs: a 2-step pipeline (VAE
warm-up -> VAE+GAN+SPADE) and the files it leaves (checkpoints in the original tool's format, ref.json, JSONL metrics,
console lines, samples named by the original tool's convention); re-runs that skip finished steps or re-run a changed
one; refusing pickle-bearing and corrupt checkpoints; freezes that stay within their step; a NaN batch that is skipped.

Resume after a real `kill -9` and the run lock are in test_runner_resume.py; loss_threshold transitions in
test_transition.py.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from datetime import datetime
from pathlib import Path

import pytest
import torch
from helpers_tiny import TINY_MODEL, load_weights, one_thread, one_torch_thread, tiny_config

from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.pipeline_schedule import PipelineFailed
from fluxflow.errors import CheckpointError

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WARM = {"name": "warm", "n_epochs": 1, "max_steps": 3, "train_vae": True}
GAN = {"name": "gan", "n_epochs": 2, "max_steps": 3, "train_vae": True, "gan_training": True, "train_spade": True,
       "eval_interval": 1}
SEED_CHECKPOINT_KEYS = {"epoch", "global_step", "models", "optimizers", "schedulers", "ema", "pipeline_metadata"}
SEED_METADATA_KEYS = {"current_step", "current_step_name", "step_start_epoch", "current_step_epoch", "batch",
                      "step_metrics"}
VAE_SUFFIXES = ("-original", "-nr_o", "_ns_o", "-ctx")


def two_step_config(out: Path, gan_lr: float | None = None, **kwargs):
    gan = dict(GAN)
    if gan_lr is not None:
        gan["optimization"] = {"optimizers": {"vae": {"type": "AdamW", "lr": gan_lr}}}
    return tiny_config(out, [WARM, gan], log_interval=2, checkpoint_save_interval=2, **kwargs)


def run_captured(config) -> tuple[list, str]:
    """run_pipeline, with what it printed (the console tracker writes to whatever sys.stdout is at the time)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        outcomes = run_pipeline(config)
    return outcomes, buffer.getvalue()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def training_lines(records: list[dict]) -> list[dict]:
    return [r for r in records if "vae_loss" in r["metrics"] or "flow_loss" in r["metrics"]]


def evaluation_lines(records: list[dict]) -> list[dict]:
    return [r for r in records if any(k.startswith("eval_") for k in r["metrics"])]


@pytest.fixture(scope="module")
def two_step(tmp_path_factory):
    """One completed 2-step pipeline shared by the read-only tests below: (config, outcomes, stdout, output dir)."""
    with one_thread():
        out = tmp_path_factory.mktemp("two_step") / "out"
        config = two_step_config(out)
        outcomes, printed = run_captured(config)
    return config, outcomes, printed, out


def test_two_step_pipeline_runs_to_completion(two_step):
    _, (warm, gan), printed, out = two_step
    assert [o.result.step_name for o in (warm, gan)] == ["warm", "gan"]
    assert all(o.result.trained and o.result.resumed_from is None for o in (warm, gan))
    assert (warm.result.outcome, warm.result.epochs_done) == ("epochs_done", 1)
    assert (gan.result.outcome, gan.result.epochs_done) == ("epochs_done", 2)
    # global bookkeeping continues across steps: 3 batches, then 2 epochs x 3 batches
    assert (warm.ref.global_step, warm.ref.epoch) == (3, 1)
    assert (gan.ref.global_step, gan.ref.epoch) == (9, 3)
    assert "Starting step: warm, epoch 1, batch 0" in printed
    assert "Starting step: gan, epoch 1, batch 0" in printed
    assert {"vae_loss", "kl_loss", "g_loss", "d_loss"} <= set(gan.result.final_metrics)


def test_a_stop_request_left_by_an_earlier_run_of_the_process_does_not_stop_the_next(tmp_path):
    from fluxflow.runtime.stop_request import request_stop, stop_requested

    request_stop()  # what an interrupted flow in this process (a notebook's, a test's) leaves behind
    [outcome] = run_pipeline(tiny_config(tmp_path / "out", [{"name": "s", "n_epochs": 1, "max_steps": 2,
                                                             "train_vae": True}], no_samples=True))
    assert outcome.result.outcome == "epochs_done" and not stop_requested()


def test_checkpoints_follow_the_seed_format_and_match_their_reference(two_step):
    _, outcomes, _, out = two_step
    for index, outcome in enumerate(outcomes):
        step = outcome.result.step_name
        folder = out / "checkpoints" / step
        final = folder / "final.pt"
        assert outcome.ref.uri == str(final)
        assert outcome.ref.sha256 == sha256(final)
        assert sha256(folder / "latest.pt") == sha256(final)  # final.pt is the last latest.pt, frozen
        recorded = json.loads((folder / "ref.json").read_text())
        assert recorded["ref"] == outcome.ref.to_dict()
        assert recorded["result"] == outcome.result.to_dict()
        assert recorded["step_config"]["name"] == step

        state = load_weights(final)  # weights_only=True
        assert SEED_CHECKPOINT_KEYS <= set(state)
        meta = state["pipeline_metadata"]
        assert SEED_METADATA_KEYS <= set(meta)
        assert (meta["current_step"], meta["current_step_name"]) == (index, step)
        assert (state["epoch"], state["global_step"]) == (outcome.ref.epoch, outcome.ref.global_step)
        assert meta["step_key"] == outcome.ref.step_key and meta["completed"] is True

    warm, gan = (load_weights(out / "checkpoints" / s / "final.pt") for s in ("warm", "gan"))
    assert set(warm["models"]) == {"compressor", "expander"} and set(warm["optimizers"]) == {"vae"}
    assert set(gan["models"]) == {"compressor", "expander", "discriminator"}
    assert set(gan["optimizers"]) == {"vae", "discriminator"}
    assert {"compressor", "expander"} <= set(gan["ema"])
    meta = gan["pipeline_metadata"]
    assert (meta["step_start_epoch"], meta["current_step_epoch"], meta["batch"]) == (1, 2, 0)
    assert set(meta["step_metrics"]) == {"warm", "gan"}  # the per-step history of the whole pipeline
    assert len(meta["step_metrics"]["gan"]["g_loss"]) == 4  # one value per logged interval


def test_metrics_files_follow_the_seed_jsonl_format(two_step):
    _, _, _, out = two_step
    warm_all = jsonl(out / "graph" / "training_metrics_warm.jsonl")
    gan_all = jsonl(out / "graph" / "training_metrics_gan.jsonl")
    warm, gan = training_lines(warm_all), training_lines(gan_all)
    assert len(warm) + len(evaluation_lines(warm_all)) == len(warm_all)
    assert len(gan) + len(evaluation_lines(gan_all)) == len(gan_all)
    # log_interval 2 over 3 batches: after batch 2 and at the end of the epoch
    assert [(r["epoch"], r["batch"], r["global_step"]) for r in warm] == [(1, 2, 2), (1, 3, 3)]
    assert [(r["epoch"], r["batch"], r["global_step"]) for r in gan] == [(1, 2, 5), (1, 3, 6), (2, 2, 8),
                                                                           (2, 3, 9)]
    for record in warm + gan:
        assert set(record) == {"timestamp", "session_id", "epoch", "batch", "global_step", "metrics"}
        datetime.fromisoformat(record["timestamp"])
        assert re.fullmatch(r"\d{8}_\d{6}", record["session_id"])
    assert all({"vae_loss", "kl_loss"} <= set(r["metrics"]) and "g_loss" not in r["metrics"] for r in warm)
    assert all({"vae_loss", "kl_loss", "g_loss", "d_loss"} <= set(r["metrics"]) for r in gan)


def test_every_step_is_evaluated_at_its_end_and_every_eval_interval_epochs(two_step):
    _, (warm, gan), printed, out = two_step
    warm_eval = evaluation_lines(jsonl(out / "graph" / "training_metrics_warm.jsonl"))
    gan_eval = evaluation_lines(jsonl(out / "graph" / "training_metrics_gan.jsonl"))
    # warm: only at its end; gan (eval_interval 1, 2 epochs): after epoch 1 and at its end
    assert [(r["epoch"], r["global_step"]) for r in warm_eval] == [(1, 3)]
    assert [(r["epoch"], r["global_step"]) for r in gan_eval] == [(1, 6), (2, 9)]
    for record in warm_eval + gan_eval:
        assert set(record["metrics"]) == {"eval_psnr", "eval_ssim"}  # no LPIPS backbone on disk in tests
        assert 0 < record["metrics"]["eval_psnr"] < 60 and -1 <= record["metrics"]["eval_ssim"] <= 1
    # The end-of-step numbers are the step's final metrics, next to its training losses.
    assert warm.result.final_metrics["eval_psnr"] == warm_eval[-1]["metrics"]["eval_psnr"]
    assert gan.result.final_metrics["eval_ssim"] == gan_eval[-1]["metrics"]["eval_ssim"]
    assert printed.count("Evaluation of gan after epoch") == 2


def test_console_lines_show_exactly_the_seeds_metrics_for_the_mode(two_step):
    _, _, printed, _ = two_step
    pattern = re.compile(r"^\[\d\d:\d\d:\d\d\] Step (\w+) \((\d)/2\) \| Epoch (\d)/(\d) \| Batch (\d)/3 \| "
                         r"(.*) \| [\d.e+-]+s/batch$")
    lines = [m for m in map(pattern.match, printed.splitlines()) if m]
    assert [(m[1], m[2], m[3], m[4], m[5]) for m in lines] == [
        ("warm", "1", "1", "1", "2"), ("warm", "1", "1", "1", "3"),
        ("gan", "2", "1", "2", "2"), ("gan", "2", "1", "2", "3"),
        ("gan", "2", "2", "2", "2"), ("gan", "2", "2", "2", "3")]
    for m in lines:
        labels = [part.split(": ")[0] for part in m[6].split(" | ")]
        assert labels == (["VAE", "KL"] if m[1] == "warm" else ["VAE", "KL", "G", "D"])


def test_sample_files_follow_the_seed_naming_convention(two_step):
    from PIL import Image

    _, (warm, gan), _, out = two_step
    expected = set()
    for number, outcome, epochs, suffixes in ((1, warm, 1, VAE_SUFFIXES), (2, gan, 2, VAE_SUFFIXES + ("-nc",))):
        name, tag = outcome.result.step_name, outcome.ref.step_key[:6]
        for epoch in range(1, epochs + 1):
            for suffix in suffixes:
                # mid-epoch after batch 2 (checkpoint_save_interval), and at the end of the epoch
                expected.add(f"{name}_{number:03d}_{epoch:03d}_{2:05d}_{tag}{suffix}.webp")
                expected.add(f"{name}_{number:03d}_{epoch:03d}_{tag}{suffix}.webp")
    files = {p.name for p in (out / "samples").iterdir()}
    assert files == expected
    # the original tool's own example form
    assert "warm_001_001_00002_" + warm.ref.step_key[:6] + "-original.webp" in files
    with Image.open(out / "samples" / f"gan_002_002_{gan.ref.step_key[:6]}-nc.webp") as image:
        assert image.format == "WEBP" and min(image.size) > 16


def test_rerun_after_completion_trains_nothing(tmp_path):
    out = tmp_path / "out"
    config = two_step_config(out, no_samples=True)
    run_pipeline(config)
    finals = {s: (out / "checkpoints" / s / "final.pt").stat().st_mtime_ns for s in ("warm", "gan")}
    lines = {s: (out / "graph" / f"training_metrics_{s}.jsonl").read_text() for s in ("warm", "gan")}

    outcomes, printed = run_captured(config)

    assert "Skipping steps: warm, gan" in printed
    assert [o.result.trained for o in outcomes] == [False, False]
    assert [o.result.outcome for o in outcomes] == ["epochs_done", "epochs_done"]
    assert outcomes[1].ref.global_step == 9
    assert {s: (out / "checkpoints" / s / "final.pt").stat().st_mtime_ns for s in finals} == finals
    assert {s: (out / "graph" / f"training_metrics_{s}.jsonl").read_text() for s in lines} == lines
    assert "Step warm" not in printed and "Step gan" not in printed  # no console training line


def test_changing_the_second_steps_lr_reruns_only_the_second_step(tmp_path):
    out = tmp_path / "out"
    first = run_pipeline(two_step_config(out, no_samples=True))
    warm_final, gan_dir = out / "checkpoints" / "warm" / "final.pt", out / "checkpoints" / "gan"
    warm_before = (warm_final.stat().st_mtime_ns, sha256(warm_final))
    warm_lines = (out / "graph" / "training_metrics_warm.jsonl").read_text()
    old_gan_key, old_gan_sha = first[1].ref.step_key, first[1].ref.sha256

    outcomes, printed = run_captured(two_step_config(out, gan_lr=3e-4, no_samples=True))

    assert "Skipping steps: warm" in printed and "Skipping steps: warm, gan" not in printed
    assert [o.result.trained for o in outcomes] == [False, True]
    assert (warm_final.stat().st_mtime_ns, sha256(warm_final)) == warm_before
    assert (out / "graph" / "training_metrics_warm.jsonl").read_text() == warm_lines
    # the old second-step files are moved aside, not deleted, and the reason is printed
    aside = gan_dir / "superseded" / old_gan_key
    assert sha256(aside / "final.pt") == old_gan_sha
    assert (aside / "ref.json").exists()
    assert re.search(r"Re-running step gan: .*optimizers\.vae\.lr: 0\.0001 -> 0\.0003", printed)
    new = outcomes[1]
    assert new.ref.step_key != old_gan_key and new.ref.sha256 != old_gan_sha
    assert sha256(gan_dir / "final.pt") == new.ref.sha256
    assert new.ref.global_step == 9  # started again from warm's final.pt, not from the old gan checkpoint
    assert load_weights(gan_dir / "final.pt")["optimizers"]["vae"]["param_groups"][0]["lr"] == pytest.approx(3e-4)


class _OpensAFile:
    """Unpickling this calls open(path, "w"): proof that a loader executed code from the checkpoint."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickle_bearing_model_checkpoint_is_refused(tmp_path):
    evil, marker = tmp_path / "evil.pt", tmp_path / "code_ran"
    torch.save({"models": {}, "payload": _OpensAFile(marker)}, evil)
    config = tiny_config(tmp_path / "out", [WARM], model_checkpoint=str(evil), no_samples=True)

    refused = (r"step warm failed: checkpoint .*evil\.pt refused: "
               r"contains Python objects that would run code when loaded")
    with pytest.raises(PipelineFailed, match=refused) as info:
        run_pipeline(config)
    assert isinstance(info.value.__cause__, CheckpointError)
    assert str(evil) in str(info.value)
    assert not marker.exists(), "loading the checkpoint ran code from it"
    assert not (tmp_path / "out" / "checkpoints" / "warm" / "final.pt").exists()


def test_a_model_checkpoint_of_other_sizes_is_refused_naming_them(tmp_path):
    """A model_checkpoint trained with vae_dim 8 under a config of 16 (and 1 channel under 3): loading it ended in a
    state_dict "size mismatch" of some 5,000 characters, retried as if it could pass."""
    first = run_pipeline(tiny_config(tmp_path / "first", [WARM], no_samples=True, data={"img_size": 16, "channels": 1}))
    wider = dict(TINY_MODEL, vae_dim=TINY_MODEL["vae_dim"] * 2)
    config = tiny_config(tmp_path / "out", [WARM], model_checkpoint=first[0].ref.uri, model=wider, no_samples=True)

    with pytest.raises(PipelineFailed) as info:
        run_pipeline(config)
    assert isinstance(info.value.__cause__, CheckpointError)  # not retried; one line at the CLI, exit 2
    assert str(info.value.__cause__) == (
        f"model_checkpoint {first[0].ref.uri} holds a model of other sizes than this config's: model.vae_dim: "
        f"{TINY_MODEL['vae_dim']} in the checkpoint, {wider['vae_dim']} in the config; data.channels: 1 in the "
        "checkpoint, 3 in the config; set the config's to the checkpoint's, or start from another checkpoint")
    assert not (tmp_path / "out" / "checkpoints" / "warm" / "latest.pt").exists()


def test_a_corrupt_latest_checkpoint_with_none_before_it_is_kept_aside_named_and_the_step_trains_again(tmp_path):
    out = tmp_path / "out"
    config = tiny_config(out, [WARM], no_samples=True)
    first = run_pipeline(config)
    folder = out / "checkpoints" / "warm"
    (folder / "final.pt").unlink()  # as if killed before the step finished...
    (folder / "ref.json").unlink()
    latest = folder / "latest.pt"
    truncated = latest.read_bytes()[: latest.stat().st_size // 2]  # ...with a truncated latest.pt
    latest.write_bytes(truncated)

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        again = run_pipeline(config)
    [kept] = (folder / "corrupt").iterdir()
    assert (kept / "latest.pt").read_bytes() == truncated  # kept, as it was, for the user to inspect
    [line] = [line for line in buffer.getvalue().splitlines() if line.startswith("No checkpoint of this step")]
    assert str(latest) in line and "corrupt" in line and str(kept) in line
    assert "Starting step: warm, epoch 1, batch 0" in buffer.getvalue()
    assert again[0].ref.global_step == first[0].ref.global_step and (folder / "final.pt").exists()


def test_freezes_do_not_leak_into_the_next_step(tmp_path):
    out = tmp_path / "out"
    steps = [{"name": "vae", "n_epochs": 1, "max_steps": 2, "train_vae": True},
             {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff": True, "freeze": ["compressor", "expander"]},
             {"name": "vae_again", "n_epochs": 1, "max_steps": 2, "train_vae": True}]
    run_pipeline(tiny_config(out, steps, no_samples=True))
    models = {s: load_weights(out / "checkpoints" / s / "final.pt")["models"] for s in ("vae", "flow", "vae_again")}

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    for name in ("compressor", "expander"):
        assert same(models["vae"][name], models["flow"][name]), f"{name} changed while frozen"
        assert not same(models["flow"][name], models["vae_again"][name]), f"{name} stayed frozen in vae_again"
    # what the third step does not train it carries unchanged
    for name in ("flow_processor", "text_encoder"):
        assert same(models["flow"][name], models["vae_again"][name])


def test_a_nan_batch_is_skipped_and_counted_by_the_runner(tmp_path, monkeypatch):
    """Batch 2 of epoch 1 holds a NaN image: its update is skipped, logged as skipped_updates, and the weights that
    reach final.pt are finite."""
    import fluxflow.train.step_data as step_data
    from fluxflow.data import epoch_permutation

    config = tiny_config(tmp_path / "out", [dict(WARM, max_steps=3)], no_samples=True)
    poisoned = set(epoch_permutation(32, config.training.seed, 0)[4:8].tolist())  # the second batch of epoch 0
    real_build = step_data.build_dataset

    class Poisoned(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner = inner

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, i):
            image, caption = self.inner[i]
            return (torch.full_like(image, float("nan")) if i in poisoned else image), caption

    def build(ds_cfg, img_size, channels, split="train", rank=0, world=1):
        dataset = real_build(ds_cfg, img_size, channels, split, rank, world)
        return Poisoned(dataset) if split == "train" else dataset

    monkeypatch.setattr(step_data, "build_dataset", build)
    [outcome] = run_pipeline(config)

    records = training_lines(jsonl(tmp_path / "out" / "graph" / "training_metrics_warm.jsonl"))  # log_interval 1
    assert [r["metrics"]["skipped_updates"] for r in records] == [0.0, 1.0, 0.0]
    assert records[1]["metrics"]["vae_loss"] is None  # NaN is written as null (strict JSON)
    state = load_weights(outcome.ref.uri)
    for name, tensors in list(state["models"].items()) + [(n, e["shadow"]) for n, e in state["ema"].items()]:
        assert all(torch.isfinite(t).all() for t in tensors.values()), name


def test_step_result_counts_every_skipped_update_of_the_step(tmp_path, monkeypatch):
    import fluxflow.train.step_data as step_data

    config = tiny_config(tmp_path / "out", [dict(WARM, max_steps=3)], no_samples=True)
    real_build = step_data.build_dataset

    def build(ds_cfg, img_size, channels, split="train", rank=0, world=1):
        dataset = real_build(ds_cfg, img_size, channels, split, rank, world)
        if split != "train":
            return dataset
        return [(torch.full_like(image, float("nan")), caption) for image, caption in
                (dataset[i] for i in range(len(dataset)))]

    monkeypatch.setattr(step_data, "build_dataset", build)
    [outcome] = run_pipeline(config)
    assert outcome.result.final_metrics["skipped_updates"] == 3.0  # every batch of the step was skipped


def test_the_same_config_trains_the_same_weights_in_any_process(tmp_path):
    """A fresh Python process seeds torch's global RNG at random; two runs of one config must still agree."""
    weights = []
    for process_state in (1, 2):
        torch.manual_seed(process_state)  # stands for two processes' different starting RNG states
        [outcome] = run_pipeline(tiny_config(tmp_path / f"run{process_state}", [dict(WARM, max_steps=1)],
                                             no_samples=True))
        weights.append(load_weights(outcome.ref.uri)["models"])
    first, second = weights
    assert all(torch.equal(first[c][k], second[c][k]) for c in first for k in first[c])


def test_a_step_killed_after_its_last_epoch_was_saved_finishes_without_training_more(tmp_path):
    """latest.pt of the last epoch is written before final.pt: a kill in between must not add an epoch on resume."""
    out = tmp_path / "out"
    config = tiny_config(out, [WARM], log_interval=1, checkpoint_save_interval=2, no_samples=True)
    [first] = run_pipeline(config)
    folder = out / "checkpoints" / "warm"
    (folder / "final.pt").unlink()
    (folder / "ref.json").unlink()

    [again], printed = run_captured(config)
    # its last epoch with its 3 batches done: "epoch=2, batch=0" named an epoch a 1-epoch step does not have
    assert again.result.trained and again.result.resumed_from == (0, 3)
    assert "Resuming from checkpoint: step=1 (warm), epoch=1, batch=3" in printed
    assert "Finished step warm: epochs_done after 1 epoch, global_step=3" in printed  # was "1 epoch(s)"
    assert "Finishing step warm: its latest.pt holds its last epoch, nothing is trained again" in printed
    assert "Starting step" not in printed  # 'Starting step: warm, epoch 2, batch 0' of a 1-epoch step
    assert "Batch" not in printed  # no batch was trained again
    assert (again.ref.global_step, again.ref.epoch, again.result.epochs_done) == (3, 1, 1)
    assert again.ref.sha256 == first.ref.sha256  # the same weights, finalized
    assert again.result.final_metrics["vae_loss"] == first.result.final_metrics["vae_loss"]
