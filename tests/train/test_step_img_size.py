"""Resolution per step: `img_size` on a step (or its dataset) over `data.img_size`; validated against the model's
downscale and patch size, part of the step key when it is not data.img_size, and what the step trains, resumes,
evaluates and samples at."""
from __future__ import annotations

import pytest
import torch
from helpers_tiny import load_weights, one_torch_thread, step_keys, tiny_config, tiny_raw  # noqa: F401
from PIL import Image

from fluxflow.config import ConfigError, load_config
from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request
from fluxflow.train.pipeline import run_pipeline

WARM = {"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True}
FLOW_32 = {"name": "flow", "n_epochs": 2, "max_steps": 3, "train_diff": True, "img_size": 32}


def test_a_step_size_overrides_its_datasets_which_overrides_data_img_size(tmp_path):
    raw = tiny_raw(tmp_path, [WARM, {"name": "flow", "n_epochs": 1, "train_diff": True, "dataset": "big"},
                              {"name": "flow64", "n_epochs": 1, "train_diff": True, "img_size": 64, "after": "warm",
                               "dataset": "big"}])
    raw["training"]["pipeline"]["datasets"]["big"] = {"type": "shapes", "size": 32, "img_size": 32}
    config = load_config(raw).config
    assert {s.name: s.img_size for s in config.resolved_steps()} == {"warm": 16, "flow": 32, "flow64": 64}
    from fluxflow.config.summary import format_summary

    summary = format_summary(config)
    assert "Dataset: shapes, batch 4\n" in summary and "Dataset: big, batch 4, 64x64" in summary


@pytest.mark.parametrize("where,value,path", [
    ("step", 20, "training.pipeline.steps[1].img_size"),
    ("dataset", 36, "training.pipeline.datasets.shapes.img_size"),
])
def test_a_size_that_does_not_fit_the_model_is_reported_at_its_field(tmp_path, where, value, path):
    raw = tiny_raw(tmp_path, [WARM, dict(FLOW_32, img_size=value if where == "step" else 32)])
    if where == "dataset":
        raw["training"]["pipeline"]["datasets"]["shapes"]["img_size"] = value
    with pytest.raises(ConfigError) as raised:
        load_config(raw)
    assert [(i.path, i.message) for i in raised.value.issues] == [
        (path, f"{value} must be a multiple of 8 (model.downscale 4 x model.patch_size 2)")]


def test_a_change_of_a_steps_size_changes_its_key_whether_its_own_or_data_img_size(tmp_path):
    plain = step_keys(tiny_config(tmp_path, [WARM, dict(FLOW_32, img_size=None)]))
    same = step_keys(tiny_config(tmp_path, [WARM, dict(FLOW_32, img_size=16)]))  # data.img_size, written out
    bigger = step_keys(tiny_config(tmp_path, [WARM, FLOW_32]))
    assert same == plain
    assert bigger["warm"] == plain["warm"] and bigger["flow"] != plain["flow"]
    raw = tiny_raw(tmp_path, [WARM, dict(FLOW_32, img_size=None)])
    raw["data"]["img_size"] = 24
    inherited = step_keys(load_config(raw).config)
    assert inherited["warm"] != plain["warm"] and inherited["flow"] != plain["flow"]


class StopAt:
    """Requests a stop, as the flow does on Ctrl-C, once the given step logged the given (epoch, batch)."""

    def __init__(self, inner, step: str, epoch: int, batch: int):
        self.inner, self.at = inner, (step, epoch, batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def log_metrics(self, metrics, progress):
        from fluxflow.runtime.stop_request import request_stop

        self.inner.log_metrics(metrics, progress)
        if (progress.step_name, progress.epoch, progress.batch) == self.at:
            request_stop()


def run(out, tracker=None):
    torch.manual_seed(1234)
    config = tiny_config(out, [WARM, FLOW_32], log_interval=1, checkpoint_save_interval=100, dataset_size=20)
    return run_pipeline(config, tracker=tracker)


@pytest.mark.slow
def test_16_then_32_px_trains_resumes_mid_step_exactly_and_samples_at_32_px(tmp_path, one_torch_thread):  # noqa: F811
    from fluxflow.train.tracking import ConsoleJsonlTracker

    reference = run(tmp_path / "whole")
    final = load_weights(reference[1].ref.uri)
    assert final["data"]["img_size"] == 32  # generation from it defaults to 32 px
    samples = tmp_path / "whole" / "samples"
    warm_grids, flow_grids = list(samples.glob("*warm*-nr_o*")), list(samples.glob("*flow*-t2i.webp"))
    assert warm_grids and flow_grids and not list(samples.glob("*t2i_*px*"))
    # Grids with a 2 px border round each image: warm's 4 held-out reconstructions in a row, flow's one caption.
    assert {Image.open(p).size for p in warm_grids} == {(4 * (16 + 2) + 2, 16 + 4)}
    assert {Image.open(p).size for p in flow_grids} == {(32 + 4, 32 + 4)}

    stopped = tmp_path / "stopped"
    clear_stop_request()
    try:
        with pytest.raises(StepInterrupted, match="flow interrupted at epoch 2, batch 1"):
            run(stopped, StopAt(ConsoleJsonlTracker(stopped), "flow", 2, 1))
    finally:
        clear_stop_request()
    meta = load_weights(stopped / "checkpoints" / "flow" / "latest.pt")["pipeline_metadata"]
    assert (meta["current_step_epoch"], meta["batch"], meta["step_config"]["img_size"]) == (1, 1, 32)
    resumed = run(stopped)
    assert resumed[1].result.resumed_from == (1, 1)
    a, b = load_weights(reference[1].ref.uri), load_weights(resumed[1].ref.uri)
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"])
    assert_same(a["models"], b["models"], "models")
    assert_same(a["ema"], b["ema"], "ema")
    assert_same(a["optimizers"], b["optimizers"], "optimizers")


def assert_same(a, b, where: str) -> int:
    """Bit-identical nested state; returns how many tensors were compared."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
        return 1
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        return sum(assert_same(a[k], b[k], f"{where}.{k}") for k in a)
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        return sum(assert_same(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b)))
    assert a == b, where
    return 0
