"""scripts/prompt_figure.py: the README's figures of generated images, one row per prompt, a column group per model."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fluxflow.sampling.sample_files import prompt_file_name

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import prompt_figure  # noqa: E402

PROMPTS = ["a red circle on a black background, center", "a blue square on a gray background, center"]


def folder_of(path: Path, rgb: tuple[int, int, int], n: int) -> str:
    """A fluxflow-generate output folder whose every image is one colour."""
    path.mkdir()
    for prompt in PROMPTS:
        for seed in range(n):
            Image.new("RGB", (32, 32), rgb).save(path / prompt_file_name(prompt, seed, "png"))
    return str(path)


def test_each_folder_is_a_group_of_seed_columns_in_one_figure(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n\n")
    red, green = folder_of(tmp_path / "a", (255, 0, 0), 2), folder_of(tmp_path / "b", (0, 255, 0), 2)
    out = tmp_path / "figure.png"
    prompt_figure.main([str(prompts), str(out), red, green, "--label", "A", "--label", "B", "--n", "2"])
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3)
    counts = {name: int((pixels == rgb).all(axis=1).sum()) for name, rgb in (("red", (255, 0, 0)),
                                                                              ("green", (0, 255, 0)))}
    # Both models' images are drawn, the same area each (2 prompts x 2 seeds)
    assert counts["red"] > 0 and counts["green"] > 0
    assert abs(counts["red"] - counts["green"]) <= 0.1 * counts["red"]


def test_a_label_count_that_does_not_match_the_folders_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        prompt_figure.main(["p.txt", str(tmp_path / "f.png"), "a", "b", "--label", "only one"])
    assert exit_.value.code == 2
    assert "1 --label for 2 folders" in capsys.readouterr().err


def test_a_folder_missing_images_is_one_usage_line_before_anything_is_drawn(tmp_path, capsys):
    """A folder without an image of a prompt and seed ended in PIL's FileNotFoundError traceback."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    full, short = folder_of(tmp_path / "a", (255, 0, 0), 2), folder_of(tmp_path / "b", (0, 255, 0), 1)
    out = tmp_path / "figure.png"
    with pytest.raises(SystemExit) as exit_:
        prompt_figure.main([str(prompts), str(out), full, short, "--n", "2"])
    assert exit_.value.code == 2 and not out.exists()
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.split(": error: ", 1)[1].startswith(f"{short} lacks 2 of the 4 images (first: "
                          f"{prompt_file_name(PROMPTS[0], 1, 'png')}); make them with fluxflow-generate")
