"""Learning-rate schedules (fluxflow/train/lr_schedule.py): linear warm-up then the scheduler, per optimizer step by
default, per epoch on request; the lr the n-th update uses is as documented, and resume continues it exactly."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from fluxflow.checkpoints.io import load_checkpoint, save_checkpoint
from fluxflow.config.optim import SchedulerConfig
from fluxflow.train.lr_schedule import build_schedulers, inert_reason
from fluxflow.train.optim import make_optimizer, optimizer_step
from fluxflow.train.param_groups import param_groups

LR = 0.1


def optimizer() -> torch.optim.Optimizer:
    """AdamW over a decay and a no-decay group, as build_optimizers makes them: both follow the schedule."""
    torch.manual_seed(0)
    matrix, bias = torch.nn.Parameter(torch.randn(3, 3)), torch.nn.Parameter(torch.randn(3))
    return make_optimizer({"type": "AdamW", "lr": LR}, param_groups([matrix], [bias]), LR)


def train(opt, schedule, steps_per_epoch: int, epochs: range, metric: float | None = None) -> list[float]:
    """The lr each update used, calling the schedule where the runner does."""
    used = []
    for _ in epochs:
        for _ in range(steps_per_epoch):
            lrs = {group["lr"] for group in opt.param_groups}
            assert len(lrs) == 1
            used.append(lrs.pop())
            loss = sum((p ** 2).sum() for group in opt.param_groups for p in group["params"])
            loss.backward()
            optimizer_step([opt], torch.isfinite(loss), 1.0)
            schedule.after_optimizer_step()
        schedule.after_epoch(metric)
    return used


def schedule_for(opt, max_epochs: int, steps_per_epoch: int | None, **cfg):
    resolved = SchedulerConfig(**cfg).resolved(max_epochs)
    return build_schedulers({"g": resolved}, {"g": opt}, max_epochs, steps_per_epoch)["g"]


def test_warmup_then_cosine_per_optimizer_step_gives_the_documented_lr():
    opt = optimizer()
    schedule = schedule_for(opt, 2, 5, type="CosineAnnealingLR", eta_min_factor=0.1, warmup_steps=4)
    used = train(opt, schedule, 5, range(2))
    total, warmup, eta_min = 10, 4, 0.1 * LR
    expected = [LR * n / warmup if n <= warmup else
                eta_min + (LR - eta_min) * (1 + math.cos(math.pi * (n - warmup) / (total - warmup))) / 2
                for n in range(1, total + 1)]
    assert used == pytest.approx(expected, rel=1e-9)
    assert used[-1] == pytest.approx(eta_min)  # the last update of the step reaches eta_min


def test_interval_step_is_the_default_and_cosine_spans_the_steps_optimizer_steps():
    opt = optimizer()
    schedule = schedule_for(opt, 3, 4, type="CosineAnnealingLR", eta_min_factor=0.0)
    assert schedule.interval == "step"
    used = train(opt, schedule, 4, range(3))
    # update 1 at the start lr, update 12 (the step's last) at eta_min, as documented (it was cos(11/12 pi): 0.017)
    assert used == pytest.approx([(1 + math.cos(math.pi * n / 11)) / 2 * LR for n in range(12)], abs=1e-12)


@pytest.mark.parametrize("cfg, last", [
    ({"type": "CosineAnnealingLR", "eta_min_factor": 0.1}, 0.1 * LR),
    ({"type": "LinearLR", "start_factor": 1.0, "end_factor": 0.1}, 0.1 * LR),
    ({"type": "ConstantLR", "factor": 0.5}, 0.5 * LR),
], ids=lambda v: v["type"] if isinstance(v, dict) else "")
def test_per_update_schedules_end_at_the_last_update_whatever_the_warmup(cfg, last):
    """warmup_steps 0 and 1 are one schedule (the 1st update trains at 1/1 x the start lr either way); every warm-up
    ends the schedule at the step's last update, and ConstantLR's factor holds through it (it used to be the full lr
    there with a warm-up, and warm-up 0 did not reach eta_min / end_factor)."""
    runs = {}
    for warmup in (0, 1, 3):
        opt = optimizer()
        runs[warmup] = train(opt, schedule_for(opt, 2, 4, warmup_steps=warmup, **cfg), 4, range(2))
        assert runs[warmup][-1] == pytest.approx(last)
    assert runs[0] == runs[1]


def test_interval_epoch_keeps_per_epoch_stepping():
    opt = optimizer()
    schedule = schedule_for(opt, 3, 4, type="StepLR", step_size=1, gamma=0.5, interval="epoch")
    assert train(opt, schedule, 4, range(3)) == pytest.approx([LR] * 4 + [LR / 2] * 4 + [LR / 4] * 4)


def test_interval_epoch_cosine_spans_the_epochs_as_before():
    opt = optimizer()
    schedule = schedule_for(opt, 4, 2, type="CosineAnnealingLR", eta_min_factor=0.0, interval="epoch")
    used = train(opt, schedule, 2, range(4))[::2]
    assert used == pytest.approx([(1 + math.cos(math.pi * e / 4)) / 2 * LR for e in range(4)], abs=1e-12)


def test_warmup_before_an_epoch_scheduler_holds_it_until_the_warmup_is_over():
    opt = optimizer()
    schedule = schedule_for(opt, 3, 2, type="StepLR", step_size=1, gamma=0.5, interval="epoch", warmup_steps=3)
    # warm-up over updates 1-3; the first epoch end after it is the end of epoch 2
    assert train(opt, schedule, 2, range(3)) == pytest.approx([LR / 3, 2 * LR / 3, LR, LR, LR / 2, LR / 2])


def test_an_epoch_linear_lr_after_a_warmup_spans_the_epochs_after_it_as_documented():
    """total_iters defaulted to all 4 epochs, as if there were no warm-up: the last epoch trained at 0.55x, not
    spanning the 3 epoch ends from the first one after the warm-up as CosineAnnealingLR does (docs/CONFIG.md)."""
    opt = optimizer()
    resolved = SchedulerConfig(type="LinearLR", interval="epoch", warmup_steps=4, end_factor=0.1).resolved(4)
    assert resolved.total_iters is None  # the runner's span: it knows the epoch's updates
    schedule = build_schedulers({"g": resolved}, {"g": opt}, 4, 2)["g"]
    factors = [1 + (0.1 - 1) * k / 3 for k in (1, 2)]  # 3 epoch ends: after epochs 2, 3 and 4
    assert train(opt, schedule, 2, range(4)) == pytest.approx(
        [LR / 4, LR / 2, 3 * LR / 4, LR] + [f * LR for f in factors for _ in range(2)])
    without_warmup = SchedulerConfig(type="LinearLR", interval="epoch", end_factor=0.1).resolved(4)
    assert without_warmup.total_iters == 4  # unchanged where there is no warm-up: the same keys and schedules


def test_plateau_steps_per_epoch_with_the_metric_only():
    opt = optimizer()
    schedule = schedule_for(opt, 4, 2, type="ReduceLROnPlateau", patience=0, factor=0.5)
    assert schedule.interval == "epoch"
    used = train(opt, schedule, 2, range(3), metric=1.0)  # never improves after the first epoch
    assert used == pytest.approx([LR, LR, LR, LR, LR / 2, LR / 2])
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 4)  # after the third epoch end
    train(opt, schedule, 1, range(1), metric=None)
    assert opt.param_groups[0]["lr"] == pytest.approx(LR / 4)  # no metric, no step


@pytest.mark.parametrize("cfg", [
    {"type": "CosineAnnealingLR", "warmup_steps": 5},
    {"type": "LinearLR", "start_factor": 0.5, "end_factor": 0.1, "warmup_steps": 3},
    {"type": "MultiStepLR", "milestones": [2, 6], "gamma": 0.5, "warmup_steps": 2},
    {"type": "MultiStepLR", "milestones": [1, 3], "gamma": 0.5, "interval": "epoch"},
    {"type": "StepLR", "step_size": 1, "gamma": 0.7, "interval": "epoch", "warmup_steps": 4},
    {"type": "ConstantLR", "factor": 1.0, "warmup_steps": 7},
], ids=lambda cfg: cfg["type"] + "-" + cfg.get("interval", "step"))
def test_a_resumed_schedule_continues_the_exact_lr_sequence(cfg, tmp_path):
    steps_per_epoch, epochs = 3, 4
    opt = optimizer()
    whole = train(opt, schedule_for(opt, epochs, steps_per_epoch, **cfg), steps_per_epoch, range(epochs))
    first = optimizer()
    schedule = schedule_for(first, epochs, steps_per_epoch, **cfg)
    before = train(first, schedule, steps_per_epoch, range(2))
    saved = through_checkpoint({"optimizer": first.state_dict(), "schedule": schedule.state_dict()}, tmp_path)
    resumed = optimizer()
    again = schedule_for(resumed, epochs, steps_per_epoch, **cfg)
    resumed.load_state_dict(saved["optimizer"])  # in this order, as the runner does
    again.load_state_dict(saved["schedule"])
    after = train(resumed, again, steps_per_epoch, range(2, epochs))
    assert before + after == whole  # bit for bit


def through_checkpoint(state: dict, tmp_path) -> dict:
    """`state` written and read back as latest.pt is (save_checkpoint refuses what a checkpoint may not hold:
    MultiStepLR's milestones, a Counter, made every MultiStepLR step fail at its first checkpoint save)."""
    save_checkpoint(state, tmp_path / "latest.pt")
    return load_checkpoint(tmp_path / "latest.pt")


def test_linear_warmup_ramps_to_the_start_lr_of_linear_lr():
    opt = optimizer()
    schedule = schedule_for(opt, 1, 6, type="LinearLR", start_factor=0.5, end_factor=0.5, warmup_steps=2)
    assert train(opt, schedule, 6, range(1)) == pytest.approx([LR / 4, LR / 2] + [LR / 2] * 4)


def test_without_steps_per_epoch_every_schedule_steps_per_epoch_without_warmup():
    """The runner that only calls after_epoch (fluxflow/train/step_run.py before it counts optimizer steps)."""
    opt = optimizer()
    schedule = schedule_for(opt, 2, None, type="CosineAnnealingLR", eta_min_factor=0.0, warmup_steps=10)
    assert (schedule.interval, schedule.warmup_steps) == ("epoch", 0)
    assert train(opt, schedule, 3, range(2)) == pytest.approx([LR] * 3 + [LR / 2] * 3)


@pytest.mark.parametrize("cfg, inert", [
    ({"type": "CosineAnnealingLR", "warmup_steps": 9}, "warmup_steps 9 is more than the step's 8 optimizer updates"),
    ({"type": "StepLR", "step_size": 8}, "StepLR's step_size 8 is more than the 7 optimizer updates"),
    ({"type": "StepLR", "step_size": 7}, None),  # the 8th update trains at gamma x lr
    ({"type": "MultiStepLR", "milestones": [3, 9], "warmup_steps": 6}, "MultiStepLR's first milestone 3 is more "
                                                                        "than the 2 optimizer updates after"),
    # One update left after the warm-up: 'MultiStepLR's the first milestone 5 is more than the 1 optimizer updates'
    ({"type": "MultiStepLR", "milestones": [5], "warmup_steps": 7}, "MultiStepLR's first milestone 5 is more than "
                                                                    "the 1 optimizer update after its start"),
    ({"type": "MultiStepLR", "milestones": [3, 9], "warmup_steps": 5}, None),  # the 8th update drops
    ({"type": "StepLR", "step_size": 2, "interval": "epoch"}, "is more than the 1 epoch end after"),
    ({"type": "StepLR", "step_size": 1, "interval": "epoch"}, None),
    ({"type": "CosineAnnealingLR", "warmup_steps": 8}, None),
], ids=str)
def test_a_schedule_that_never_acts_in_the_step_says_why(cfg, inert):
    """A StepLR step_size or warm-up longer than the step was accepted and silently left the lr where it was."""
    opt = optimizer()
    schedule = schedule_for(opt, 2, 4, **cfg)
    assert (schedule.inert is None) if inert is None else inert in schedule.inert


def test_a_per_update_decay_that_leaves_no_lr_says_so():
    """The original tool's StepLR(step_size=10, gamma=0.5), pasted into a new config, halves the lr every 10 updates:
    ~1e-6 of it after 200, with no word (only a schedule that never acts was said)."""
    opt = optimizer()
    vanishing = schedule_for(opt, 2, 100, type="StepLR", step_size=10, gamma=0.5)
    assert train(opt, vanishing, 100, range(2))[-1] == pytest.approx(LR * 0.5 ** 19)  # the factor it names
    assert vanishing.inert == ("StepLR takes the lr to 1.9e-06 of its start by the step's last update (199 updates "
                               "after its start, interval: step): the step stops learning long before its end; if "
                               "its numbers count epochs, set interval: epoch")
    assert "ExponentialLR takes the lr to 3.0e-05" in schedule_for(optimizer(), 1, 100, type="ExponentialLR").inert
    assert schedule_for(optimizer(), 20, 100, type="StepLR", step_size=10, gamma=0.5, interval="epoch").inert is None
    assert schedule_for(optimizer(), 2, 100, type="StepLR", step_size=100, gamma=0.5).inert is None
    assert schedule_for(optimizer(), 2, 100, type="MultiStepLR", milestones=[10, 20, 30, 40]).inert is not None


def test_a_count_of_one_reads_in_the_singular():
    assert "the step's 1 optimizer update: the lr" in inert_reason("CosineAnnealingLR", {}, 2, 1, 1, "step")
    assert "the 1 epoch end after its start" in inert_reason("StepLR", {"step_size": 2}, 0, 4, 1, "epoch")


def test_the_trainer_warns_about_a_schedule_that_never_acts(caplog):
    from helpers_tiny import step_context

    with caplog.at_level(logging.WARNING, logger="fluxflow.train.step_run"):
        step_context({"train_vae": True, "optimization": {"schedulers": {"vae": {"type": "StepLR", "step_size": 5,
                                                                                  "interval": "epoch"}}}})
    assert any(r.getMessage().startswith("Step s: optimization.schedulers.vae: StepLR's step_size 5")
               for r in caplog.records)
