"""Captions longer than the text encoder reads (model.text_max_len) are cut in training: a flow step says how many,
once: a folder's or shapes' captions when the step starts, a webdataset's as its first epoch streams."""
from __future__ import annotations

import io
import logging
import tarfile

import torch
from helpers_tiny import one_torch_thread, tiny_raw
from PIL import Image

from fluxflow.config import load_config
from fluxflow.models.text_encoder import TextEncoder
from fluxflow.train.pipeline import run_pipeline
from fluxflow.train.step_data import CutCaptions, counting_cut_captions

__all__ = ["one_torch_thread"]

FLOW = {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff_full": True}


def cut_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "longer than the text encoder reads" in r.getMessage()]


def test_captions_longer_than_the_encoder_reads_are_counted_and_the_first_named():
    encoder = TextEncoder(dim=8, depth=1, max_len=8)  # 6 bytes between BOS and EOS
    counted = CutCaptions().count(["short", "sixsix", "seven!!", "a much longer one"], encoder)
    assert (counted.seen, counted.cut, counted.first) == (4, 2, "seven!!")
    step = type("Step", (), {"dataset": "photos"})()
    assert counted.line(step, encoder, "distinct") == (
        "2 of the 4 distinct captions of dataset 'photos' are longer than the text encoder reads "
        "(model.text_max_len: 8 tokens): training cuts their ends; first: 'seven!!'")
    assert CutCaptions().count(["short"], encoder).line(step, encoder, "distinct") is None
    ended = []
    batches = [(torch.zeros(2), ["short", "a much longer one"]), (torch.zeros(1), ["seven!!"])]
    assert list(counting_cut_captions(iter(batches), encoder, ended.append)) == batches  # unchanged, counted
    assert [(c.seen, c.cut) for c in ended] == [(3, 2)]


def flow_config(tmp_path, text_max_len: int, dataset: dict | None = None):
    raw = tiny_raw(tmp_path / "out", [FLOW], no_samples=True, dataset_size=8)
    raw["model"]["text_max_len"] = text_max_len
    if dataset is not None:
        raw["training"]["pipeline"]["datasets"]["shapes"] = dataset
    return load_config(raw).config


def test_a_flow_step_says_once_how_many_shapes_captions_it_cuts(tmp_path, caplog, one_torch_thread):
    caplog.set_level(logging.WARNING, logger="fluxflow")
    run_pipeline(flow_config(tmp_path, 12))  # "a red circle ..." is longer than 10 bytes
    (line,) = cut_lines(caplog)  # was never said
    assert line.startswith("Step flow: ") and " distinct captions of dataset 'shapes' are longer than the text " \
        "encoder reads (model.text_max_len: 12 tokens)" in line


def test_a_flow_step_on_a_webdataset_counts_the_captions_of_its_first_epoch(tmp_path, caplog, one_torch_thread):
    caplog.set_level(logging.WARNING, logger="fluxflow")
    with tarfile.open(tmp_path / "s.tar", "w") as tar:
        for i in range(10):  # the first 2 held out
            png = io.BytesIO()
            Image.new("RGB", (16, 16), (30 * i, 0, 0)).save(png, format="PNG")
            caption = f"photo {i}" + (" of a long and detailed scene" if i % 2 else "")  # 7 + 29 bytes
            for ext, data in (("png", png.getvalue()), ("txt", caption.encode())):
                info = tarfile.TarInfo(f"{i:03d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    run_pipeline(flow_config(tmp_path, 16, {"type": "webdataset", "urls": str(tmp_path / "s.tar"), "holdout": 2}))
    (line,) = cut_lines(caplog)  # was never said
    assert line.startswith("Step flow: 4 of the 8 first epoch's captions of dataset 'shapes' are longer than the "
                           "text encoder reads (model.text_max_len: 16 tokens): training cuts their ends; first: "
                           "'photo "), line
