"""Held-out compositions: colour x shape pairs (or folder captions) that training never sees, their evaluation logged
at every flow evaluation, and the diversity figure that keeps a gain in adherence honest."""
from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from helpers_tiny import one_torch_thread, tiny_config
from PIL import Image

from fluxflow.data import build_dataset, make_loader
from fluxflow.config.caption_patterns import caption_matcher
from fluxflow.config.heldout_pairs import ALL_PAIRS, heldout_pairs, max_heldout_pairs
from fluxflow.data.shapes import COLORS, SHAPES, parse_caption, scene
from fluxflow.errors import DataError
from fluxflow.evaluation.diversity import prompt_diversity, spread
from fluxflow.train.pipeline import run_pipeline

__all__ = ["one_torch_thread"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def object_words(caption: str) -> set[str]:
    """The words naming the object ("a blue triangle", "a triangle", "a blue shape"), not its background's colour."""
    return set(caption.split(" on a ")[0].split())


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_no_caption_the_training_loader_yields_in_any_epoch_is_a_held_out_pair(dropout):
    ds_cfg = {"type": "shapes", "size": 600, "seed": 3, "holdout": 8, "holdout_pairs": 10, "caption_dropout": dropout}
    held = heldout_pairs(10, 3)
    assert len(held) == 10
    train = build_dataset(ds_cfg, 8, 3, "train")
    seen_pairs = set()
    for epoch in range(2):
        for _, captions in make_loader(train, 50, 0, seed=0, epoch=epoch):
            for caption in captions:  # every caption the loader yields, canonical or with a word dropped
                assert not any({c, s} <= object_words(caption) for c, s in held), caption
                parsed = parse_caption(caption)
                if parsed is not None:
                    seen_pairs.add((parsed["color"], parsed["shape"]))
    if dropout == 0:
        assert seen_pairs == set(ALL_PAIRS) - set(held)  # every other pair is trained on
    unseen = build_dataset(ds_cfg, 8, 3, "unseen")
    assert len(unseen) == 8
    assert {(parse_caption(unseen.caption(i))["color"], parse_caption(unseen.caption(i))["shape"])
            for i in range(len(unseen))} <= set(held)
    holdout = build_dataset(ds_cfg, 8, 3, "holdout")  # today's held-out split: seen pairs only
    assert all((parse_caption(holdout.caption(i))["color"], parse_caption(holdout.caption(i))["shape"]) not in held
               for i in range(len(holdout)))


def test_held_out_pairs_by_name_and_by_count():
    assert heldout_pairs(["Blue Triangle", "red star", "blue triangle"]) == (("blue", "triangle"), ("red", "star"))
    with pytest.raises(ValueError, match="not '<colour> <shape>'"):
        heldout_pairs(["blue hexagon"])
    drawn = heldout_pairs(max_heldout_pairs(), seed=1)
    assert heldout_pairs(max_heldout_pairs(), seed=1) == drawn  # a pure function of the seed
    kept = set(ALL_PAIRS) - set(drawn)  # every colour and every shape keeps a trained pair
    assert {c for c, _ in kept} == set(COLORS) and {s for _, s in kept} == set(SHAPES)
    assert heldout_pairs(None) == ()


def test_no_held_out_pairs_draws_the_stream_every_earlier_run_saw():
    plain = build_dataset({"type": "shapes", "size": 20, "seed": 0, "holdout": 4}, 8, 3, "train")
    assert [plain.caption(i) for i in range(3)] == [scene(0, i).caption for i in range(3)]
    assert plain.pairs is None and len(build_dataset({"type": "shapes", "size": 20, "holdout": 4}, 8, 3, "unseen")) == 0


def test_a_folder_holds_out_captions_matching_globs_and_regexes(tmp_path):
    lines = []
    for i, caption in enumerate(["a blue triangle", "a red square", "a Blue square", "a red triangle",
                                 "a green circle", "a green square", "a red circle", "a blue circle"]):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(tmp_path / f"{i}.png")
        lines.append(f"{i}.png\t{caption}")
    (tmp_path / "captions.txt").write_text("\n".join(lines) + "\n")
    ds_cfg = {"type": "folder", "path": str(tmp_path), "captions_file": "captions.txt", "holdout": 2,
              "holdout_captions": ["*blue square*", r"re:red\s+tri"]}
    matches = caption_matcher(ds_cfg["holdout_captions"])
    split = {name: [c for _, c in build_dataset(ds_cfg, 8, 3, name).items] for name in ("train", "holdout", "unseen")}
    assert sorted(split["unseen"]) == ["a Blue square", "a red triangle"]
    assert not any(matches(c) for c in split["train"] + split["holdout"])
    assert len(split["train"]) == 4 and len(split["holdout"]) == 2  # the hold-out is drawn from the seen captions


def test_a_holdout_is_full_even_where_its_hashed_images_have_unseen_captions(tmp_path):
    for i in range(12):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / f"img{i:03d}.png")
    (tmp_path / "captions.txt").write_text("".join(f"img{i:03d}.png\ta {['red', 'blue', 'green', 'yellow'][i % 4]} "
                                                   f"square number {i}\n" for i in range(12)))
    ds_cfg = {"type": "folder", "path": str(tmp_path), "captions_file": "captions.txt", "holdout": 2,
              "holdout_captions": ["*green*"]}  # img002 and img010, the two a hold-out of 2 hashes to, are green
    held = build_dataset(ds_cfg, 8, 3, "holdout")
    assert len(held) == 2, held.items  # was 0: no evaluation, "dataset holdout: 0", promotion failed on an empty set
    assert len(build_dataset(ds_cfg, 8, 3, "train")) == 12 - 3 - 2
    with pytest.raises(DataError, match="match every one of its 12 captions"):
        build_dataset({**ds_cfg, "holdout_captions": ["*"]}, 8, 3, "train")


def test_diversity_is_exactly_zero_for_a_model_that_ignores_its_noise():
    prompts = ["a red circle", "a blue square", "a green star"]

    def ignores_noise(texts: list[str], seed: int) -> torch.Tensor:  # the pixels depend on the text alone
        return torch.stack([torch.full((3, 8, 8), len(t) / 20.0) + torch.linspace(-1, 1, 64).view(1, 8, 8)
                            for t in texts])

    def uses_noise(texts: list[str], seed: int) -> torch.Tensor:  # one noise draw per row, as the sampler does
        return torch.randn(len(texts), 3, 8, 8, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)

    real = [torch.rand(4, 3, 8, 8) * 2 - 1 for _ in prompts]
    frozen = prompt_diversity(ignores_noise, prompts, real)
    assert frozen["diversity_gen"] == 0.0 and frozen["diversity_ratio"] == 0.0
    assert frozen["diversity_real"] > 0
    varied = prompt_diversity(uses_noise, prompts, real)
    assert varied["diversity_ratio"] > 0.5  # independent draws spread about as far as independent real images
    assert spread(real[0][:1]) == 0.0 and prompt_diversity(uses_noise, prompts, None).keys() == {"diversity_gen"}


FLOW = {"name": "flow", "n_epochs": 2, "max_steps": 2, "train_diff_full": True, "eval_interval": 1,
        "freeze": ["compressor", "expander"]}
WARM = {"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True}
UNSEEN = {"eval_adherence_unseen_color", "eval_adherence_unseen_shape", "eval_adherence_unseen_both",
          "eval_analyser_accuracy_unseen"}


def test_held_out_pair_adherence_and_diversity_are_logged_at_every_flow_evaluation(tmp_path):
    out = tmp_path / "out"
    config = tiny_config(out, [WARM, FLOW], dataset_size=16)
    config.training.pipeline.datasets["shapes"].holdout_pairs = ["blue triangle", "red circle"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        _, flow = run_pipeline(config)
    records = [json.loads(line) for line in (out / "graph" / "training_metrics_flow.jsonl").read_text().splitlines()]
    evaluations = [r for r in records if any(k.startswith("eval_") for k in r["metrics"])]
    assert [r["epoch"] for r in evaluations] == [1, 2]  # eval_interval 1: after each epoch, the last one the final
    for record in evaluations:
        metrics = record["metrics"]
        assert UNSEEN | {"eval_adherence_both", "eval_diversity_gen", "eval_diversity_ratio"} <= set(metrics)
        assert 0 <= metrics["eval_adherence_unseen_both"] <= metrics["eval_adherence_unseen_shape"] <= 1
        assert metrics["eval_analyser_accuracy_unseen"] >= 0.75  # the analyser reads the real unseen images
    assert UNSEEN <= set(flow.result.final_metrics)  # what the MLflow step run logs as final/* and compare shows
    assert printed.getvalue().count("eval_adherence_unseen_both") == 2
    warm_records = (out / "graph" / "training_metrics_warm.jsonl").read_text()
    assert "unseen" not in warm_records  # a VAE step has no text-to-image evaluation


def test_a_flow_model_without_pooled_text_conditioning_reads_the_text_through_its_tokens_only():
    from fluxflow.models import FlowProcessor

    torch.manual_seed(0)
    model = FlowProcessor(4, 16, 1, 2, 2, 8, 6, pooled_text=False)
    for p in model.parameters():  # adaLN-Zero and the output start at zero: give every weight a value
        torch.nn.init.normal_(p, std=0.3)
    x, t = torch.randn(2, 4, 4, 4), torch.rand(2)
    tokens, mask = torch.randn(2, 6, 8), torch.ones(2, 6, dtype=torch.bool)
    out = model(x, t, tokens, mask, torch.randn(2, 8))
    assert torch.equal(out, model(x, t, tokens, mask, torch.randn(2, 8)))  # any pooled vector: the same velocity
    assert not torch.allclose(out, model(x, t, torch.randn(2, 6, 8), mask, torch.randn(2, 8)))
    model.pooled_text = True
    assert not torch.allclose(out, model(x, t, tokens, mask, torch.randn(2, 8)))
