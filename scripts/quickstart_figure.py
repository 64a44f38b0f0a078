"""Draw the README's quickstart figure: each prompt's images from `fluxflow-generate`, one row per prompt.

    .venv/bin/fluxflow-generate --checkpoint outputs/quickstart/checkpoints/flow/final.pt \
        --prompts-file configs/quickstart_prompts.txt --n 4 --format png --output generated/quickstart
    .venv/bin/python scripts/quickstart_figure.py configs/quickstart_prompts.txt generated/quickstart \
        docs/images/quickstart_t2i.png
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from fluxflow.sampling.sample_files import prompt_file_name  # noqa: E402


def main(prompts_file: str, folder: str, output: str, n: int = 4) -> None:
    prompts = [line.strip() for line in Path(prompts_file).read_text().splitlines() if line.strip()]
    fig, axes = plt.subplots(len(prompts), n + 1, figsize=(1.6 * n + 4.4, 1.6 * len(prompts)),
                             gridspec_kw={"width_ratios": [2.8] + [1] * n}, squeeze=False)
    for r, prompt in enumerate(prompts):
        axes[r][0].axis("off")
        axes[r][0].text(1.0, 0.5, f"“{prompt}”", ha="right", va="center", fontsize=10)
        for seed in range(n):
            ax = axes[r][seed + 1]
            ax.axis("off")
            with Image.open(Path(folder) / prompt_file_name(prompt, seed, "png")) as image:
                ax.imshow(image.convert("RGB"), interpolation="nearest")
            if r == 0:
                ax.set_title(f"seed {seed}", fontsize=9)
    fig.tight_layout()
    fig.savefig(output, dpi=80)
    print(f"wrote {output}")


if __name__ == "__main__":
    main(*sys.argv[1:4])
