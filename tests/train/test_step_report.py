"""StepReport on its own inputs, without a StepRun: what a log interval reports, what it keeps, and what a resumed
report continues from."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from fluxflow.config import modes
from fluxflow.config.steps import Transition
from fluxflow.train.step_report import StepReport
from fluxflow.train.step_run import Position
from fluxflow.train.transition import TransitionMonitor


class Recorder:
    def __init__(self):
        self.logged: list[tuple[dict, object]] = []

    def log_metrics(self, metrics, progress):
        self.logged.append((dict(metrics), progress))


def report(position: Position, history: dict | None = None, skipped: int = 0, lr: dict | None = None,
           holdout_set=None) -> StepReport:
    modes_off = {m: False for m in modes.ALL_MODES}
    step = SimpleNamespace(name="vae", index=1, transition_on=Transition(mode="epoch"), unfreeze=[], freeze=[],
                           **(modes_off | {"train_vae": True}))
    config = SimpleNamespace(output=SimpleNamespace(d_flat_warn_updates=0, no_samples=True))
    files = SimpleNamespace(output=None, key="abc123", n_steps=3)
    data = SimpleNamespace(batches_per_epoch=4, train_set=SimpleNamespace(skipped=skipped), holdout_set=holdout_set)
    monitor = TransitionMonitor(step.transition_on, 2, torch.device("cpu"))
    return StepReport(Recorder(), config=config, step=step, files=files, data=data, monitor=monitor,
                      position=position, trainer=SimpleNamespace(last_lr=lr or {}), device=torch.device("cpu"),
                      say=print, history=history or {})


def test_a_log_interval_reports_means_at_the_steps_position_and_keeps_them_in_its_history():
    position = Position(start_epoch=0, global_step=6)
    earlier = {"warmup": {"vae_loss": [1.0]}}
    r = report(position, history=earlier, skipped=2, lr={"vae": 0.25})
    for loss in (3.0, 1.0):
        r.add({"vae_loss": torch.tensor(loss)})
    position.epoch, position.batch = 0, 4  # the epoch's last batch: the line carries skipped_samples
    r.log_interval()
    (metrics, progress), = r.tracker.logged
    assert metrics == {"vae_loss": 2.0, "lr_vae": 0.25, "skipped_samples": 2.0}  # lr: the last update's
    assert (progress.step_name, progress.step_index, progress.n_steps, progress.epoch, progress.n_epochs,
            progress.batch, progress.n_batches, progress.global_step) == ("vae", 2, 3, 1, 2, 4, 4, 6)
    assert r.history == {"warmup": {"vae_loss": [1.0]}, "vae": {"vae_loss": [2.0]}}
    assert earlier == {"warmup": {"vae_loss": [1.0]}}  # the checkpoint's dict it started from is not changed


def test_an_epochs_last_line_carries_the_count_of_unreadable_held_out_images(tmp_path):
    from PIL import Image

    from fluxflow.data import build_dataset
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / f"i{i}.png")
    (tmp_path / "captions.txt").write_text("".join(f"i{i}.png\t{i}\n" for i in range(4)))
    ds_cfg = SimpleNamespace(type="folder", path=str(tmp_path), captions_file="captions.txt", holdout=2)
    holdout = build_dataset(ds_cfg, 8, 3, "holdout")
    (tmp_path / holdout.items[0][0]).write_bytes(b"")
    [holdout[i] for i in range(2)]  # what the step's sample images read
    position = Position(start_epoch=0, global_step=4)
    r = report(position, skipped=0, holdout_set=holdout)
    r.add({"vae_loss": torch.tensor(1.0)})
    position.batch = 4
    r.log_interval()
    # was absent: a held-out image that did not decode was counted nowhere
    assert r.tracker.logged[0][0]["skipped_holdout_samples"] == 1.0
    assert report(position).skipped_counts() == {"skipped_samples": 0.0}  # shapes: no held-out files to count


def test_a_resumed_report_continues_the_interval_its_checkpoint_carried():
    first = report(Position(start_epoch=0))
    first.add({"vae_loss": torch.tensor(4.0)})
    resumed = report(Position(start_epoch=0, batch=1))
    resumed.load_state_dict(first.state_dict())
    resumed.epoch_started()  # mid-epoch: the interval's sums are kept
    resumed.add({"vae_loss": torch.tensor(2.0)})
    resumed.log_interval()
    assert resumed.tracker.logged[0][0] == {"vae_loss": 3.0}


def test_the_seconds_a_mid_epoch_checkpoint_takes_are_not_in_the_next_lines_s_per_batch(tmp_path, monkeypatch):
    """A mid-epoch save (with its samples) happens between two log lines; its time was counted as the next line's
    batches' (0.16 against 0.02 s/batch measured on a tiny model). An epoch's end (save, samples, evaluation) is not:
    the next epoch's start restarts the clock. A clock that stands still except inside a save (mid-epoch and at each
    epoch's end): every line's s/batch is 0."""
    from helpers_tiny import VAE_STEP, tiny_config

    from fluxflow.train import step_report, step_run
    from fluxflow.train.pipeline import run_pipeline
    from fluxflow.train.tracking import ConsoleJsonlTracker

    clock = SimpleNamespace(now=0.0)
    monkeypatch.setattr(step_report, "time", SimpleNamespace(perf_counter=lambda: clock.now))
    real_save = step_run.StepRun.save

    def slow_save(self, *args, **kwargs):
        clock.now += 100.0
        real_save(self, *args, **kwargs)

    monkeypatch.setattr(step_run.StepRun, "save", slow_save)
    seen = []

    class Seen(ConsoleJsonlTracker):
        def log_metrics(self, metrics, progress):
            seen.append(progress.sec_per_batch)
            super().log_metrics(metrics, progress)

    out = tmp_path / "out"
    run_pipeline(tiny_config(out, [dict(VAE_STEP, n_epochs=2, max_steps=4)], log_interval=1,
                             checkpoint_save_interval=2, no_samples=True), tracker=Seen(out))
    timed = [s for s in seen if s == s]  # the evaluation's line after the last epoch has no timing (NaN)
    assert len(timed) == 8 and set(timed) == {0.0}, seen

