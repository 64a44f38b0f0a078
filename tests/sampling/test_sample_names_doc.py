"""The sample files a step writes are named as README's "What a run writes" says: the original tool's suffixes of a
VAE step (with `-nc` for SPADE) and `-t2i` / `-t2i_<N>px` for the text-to-image samples of a flow step, one per
`output.sample_sizes` side."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from helpers_tiny import one_torch_thread, tiny_raw

from fluxflow.config import load_config
from fluxflow.models import build_component
from fluxflow.sampling.samples import write_samples

__all__ = ["one_torch_thread"]
pytestmark = pytest.mark.usefixtures("one_torch_thread")

README = Path(__file__).resolve().parents[2] / "README.md"
COMPONENTS = ("compressor", "expander", "flow_processor", "text_encoder")


def documented_suffixes() -> set[str]:
    """The suffixes README's samples/ entry names: `-{a,b}` is -a and -b, `..._ns_o` is _ns_o."""
    line = next(x for x in README.read_text().splitlines() if x.strip().startswith("samples/<step>"))
    suffixes = set()
    for group in re.findall(r"-\{([^}]*)\}", line):
        suffixes |= {"-" + name for name in group.split(",")}
    return suffixes | set(re.findall(r"\.\.\.([-_][\w<>]+)\.webp", line))


def written_suffixes(tmp_path: Path, step: dict, sample_sizes: list[int] | None) -> list[str]:
    raw = tiny_raw(tmp_path / "out", [dict({"name": "s", "n_epochs": 1}, **step)])
    raw["output"]["sample_sizes"] = sample_sizes
    config = load_config(raw).config
    resolved = config.resolved_steps()[0]
    torch.manual_seed(0)
    models = {name: build_component(name, config.model, 3).eval() for name in COMPONENTS}
    norm = {"shift": torch.zeros(config.model.latent_channels), "scale": torch.ones(config.model.latent_channels)}
    paths = write_samples(tmp_path / "samples", step=resolved, step_number=2, epoch=3, batch=None, tag="abc123",
                          models=models, holdout=torch.rand(2, 3, 16, 16) * 2 - 1, captions=["a red circle"],
                          latent_norm=norm, config=config, seed=0, spade=resolved.train_spade)
    assert all(p.name.startswith("s_002_003_abc123") for p in paths)
    return [p.name.removeprefix("s_002_003_abc123").removesuffix(".webp") for p in paths]


def test_a_spade_vae_step_writes_the_original_tools_suffixes(tmp_path):
    suffixes = written_suffixes(tmp_path, {"train_vae": True, "train_spade": True}, None)
    assert sorted(suffixes) == sorted(["-original", "-nr_o", "_ns_o", "-ctx", "-nc"])
    assert set(suffixes) <= documented_suffixes()


def test_a_flow_step_writes_t2i_at_its_size_and_t2i_npx_at_the_other_sample_sizes(tmp_path):
    suffixes = written_suffixes(tmp_path, {"train_diff": True}, [16, 32])
    assert suffixes == ["-t2i", "-t2i_32px"]  # the step trains at data.img_size 16
    assert {re.sub(r"_\d+px$", "_<N>px", s) for s in suffixes} <= documented_suffixes()
