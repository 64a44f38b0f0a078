"""The GAN health signal: D's mean logits on real and fake are logged, and a discriminator that has been flat (the
same output for real and fake) for `output.d_flat_warn_updates` updates gets one warning line (console; an MLflow run
tag through the tracker's `warn`)."""
from __future__ import annotations

import contextlib
import io
import json

from helpers_tiny import load_weights, one_torch_thread, tiny_config

from fluxflow.models.discriminator import Discriminator
from fluxflow.train.gan_health import FlatDiscriminatorWatch
from fluxflow.train.pipeline import run_pipeline
from fluxflow.output_layout import metrics_file

__all__ = ["one_torch_thread"]

GAN = {"name": "gan", "n_epochs": 1, "max_steps": 6, "train_vae": True, "gan_training": True}
FLAT = {"d_logit_real": 0.01, "d_logit_fake": -0.01, "d_loss": 2.0}
APART = {"d_logit_real": 0.8, "d_logit_fake": -0.7, "d_loss": 0.6}


def test_the_watch_warns_once_after_enough_flat_updates_and_a_learning_interval_resets_it():
    watch = FlatDiscriminatorWatch(after_updates=30)
    assert watch.observe(FLAT, 20) is None
    assert watch.observe(APART, 10) is None  # D learned in between: the count starts again
    assert watch.observe(FLAT, 20) is None
    line = watch.observe(FLAT, 10)
    assert line and "flat for 30 updates" in line and "+0.010" in line
    assert watch.observe(FLAT, 10) is None  # once per step
    assert FlatDiscriminatorWatch(after_updates=0).observe(FLAT, 10 ** 6) is None  # 0: off


def run_gan(tmp_path, gan=GAN, log_interval=1, **output):
    out = tmp_path / "out"
    config = tiny_config(out, [gan], no_samples=True, dataset_size=128, log_interval=log_interval)
    for key, value in output.items():
        setattr(config.output, key, value)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_pipeline(config)
    lines = [json.loads(line)["metrics"] for line in metrics_file(out, "gan").read_text().splitlines()]
    return printed.getvalue(), [m for m in lines if "d_loss" in m]


def test_a_discriminator_forced_flat_is_warned_about_once(tmp_path, monkeypatch, one_torch_thread):
    forward = Discriminator.forward
    monkeypatch.setattr(Discriminator, "forward", lambda self, x: forward(self, x) * 0.0)  # the same logits for all
    printed, logged = run_gan(tmp_path, d_flat_warn_updates=4)
    assert all(m["d_logit_real"] == m["d_logit_fake"] == 0.0 and m["d_loss"] == 2.0 for m in logged)
    warnings = [line for line in printed.splitlines() if "discriminator has been flat" in line]
    assert len(warnings) == 1 and warnings[0].startswith("⚠️  Step gan: ") and "flat for 4 updates" in warnings[0]


def test_a_learning_discriminator_logs_its_logits_apart_and_is_not_warned_about(tmp_path, one_torch_thread):
    # Measured on these tiny shapes (batch 4): D at lr 1e-3 holds its mean logits ~0.5 apart after 20 updates.
    learning = dict(GAN, max_steps=24, optimization={"optimizers": {"discriminator": {"lr": 1e-3}}})
    printed, logged = run_gan(tmp_path, learning, log_interval=4, d_flat_warn_updates=12)
    assert len(logged) == 6 and all(m["d_logit_real"] - m["d_logit_fake"] > 0.1 for m in logged[-2:])
    assert "discriminator has been flat" not in printed


def flat_warnings(tmp_path, monkeypatch, max_steps: int, die_at: int | None) -> list[list[str]]:
    """A forced-flat GAN step of `max_steps` updates (warned at 4 flat updates, a checkpoint every 2), killed before
    global step `die_at` (None: not killed), then run again until it finishes: the flat-D warning lines each
    invocation printed."""
    from test_step_faults import Killed, poison_and_die

    from fluxflow.train.pipeline_schedule import PipelineFailed

    forward = Discriminator.forward
    monkeypatch.setattr(Discriminator, "forward", lambda self, x: forward(self, x) * 0.0)
    config = tiny_config(tmp_path / "out", [dict(GAN, max_steps=max_steps)], no_samples=True, dataset_size=128,
                         log_interval=1, checkpoint_save_interval=2)
    config.output.d_flat_warn_updates = 4
    printed = []
    for kill in ([die_at] if die_at is not None else []) + [None]:
        poison_and_die(monkeypatch, poisoned=set(), die_at=kill)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.suppress(PipelineFailed if kill else Killed):
            run_pipeline(config)
        printed.append([line for line in buffer.getvalue().splitlines() if "discriminator has been flat" in line])
    return printed


def test_a_resumed_step_counts_the_flat_updates_before_its_checkpoint(tmp_path, monkeypatch, one_torch_thread):
    """Killed before update 4 (latest.pt at update 2, D flat for 2 updates): the resumed step warns once, as the
    uninterrupted step does at update 4. A watch that starts from 0 on resume counts 3 flat updates and never warns."""
    [whole] = flat_warnings(tmp_path / "whole", monkeypatch, max_steps=5, die_at=None)
    assert len(whole) == 1 and "flat for 4 updates" in whole[0]
    killed, resumed = flat_warnings(tmp_path / "killed", monkeypatch, max_steps=5, die_at=3)
    assert load_weights(tmp_path / "killed" / "out" / "checkpoints" / "gan" / "final.pt")["global_step"] == 5
    assert (killed, resumed) == ([], whole)


def test_a_step_that_warned_before_its_checkpoint_does_not_warn_again_after_a_resume(tmp_path, monkeypatch,
                                                                                    one_torch_thread):
    """Warned at update 4, killed before update 7 (latest.pt at update 6): the resumed step has warned already."""
    killed, resumed = flat_warnings(tmp_path, monkeypatch, max_steps=12, die_at=7)
    assert len(killed) == 1 and "flat for 4 updates" in killed[0]
    assert resumed == []
