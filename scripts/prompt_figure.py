"""Draw a figure of `fluxflow-generate` images: one row per prompt, one group of seed columns per folder (a model).

The README's quickstart figure, from one checkpoint:

    .venv/bin/fluxflow-generate --checkpoint outputs/quickstart/checkpoints/flow/final.pt \
        --prompts-file configs/quickstart_prompts.txt --n 4 --format png --output generated/quickstart
    .venv/bin/python scripts/prompt_figure.py configs/quickstart_prompts.txt docs/images/quickstart_t2i.png \
        generated/quickstart

Two models side by side, each folder's group titled by its `--label`:

    .venv/bin/python scripts/prompt_figure.py configs/compose_heldout_prompts.txt docs/images/compose_heldout.png \
        generated/short generated/compose --label "quickstart training" --label "configs/compose.yaml"
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from fluxflow.sampling.sample_files import prompt_file_name  # noqa: E402


def draw(prompts: list[str], folders: list[str], labels: list[str], n: int, output: str) -> None:
    groups = len(folders)
    # Columns: the prompt, then each folder's n seeds, a narrow gap between two folders.
    ratios = [3.8] + [1] * n + ([0.15] + [1] * n) * (groups - 1)  # the prompt's column fits ~55 characters
    fig, axes = plt.subplots(len(prompts), len(ratios), figsize=(1.6 * sum(ratios), 1.6 * len(prompts) + 0.3),
                             gridspec_kw={"width_ratios": ratios}, squeeze=False)
    for r, prompt in enumerate(prompts):
        for ax in axes[r]:
            ax.axis("off")
        axes[r][0].text(1.0, 0.5, f"“{prompt}”", ha="right", va="center", fontsize=10)
        for g, folder in enumerate(folders):
            for seed in range(n):
                ax = axes[r][1 + g * (n + 1) + seed]
                with Image.open(Path(folder) / prompt_file_name(prompt, seed, "png")) as image:
                    ax.imshow(image.convert("RGB"), interpolation="nearest")
                if r == 0:
                    title = f"seed {seed}"
                    if labels and seed == 0:  # the group's label over its first column, left-aligned
                        ax.set_title(f"{labels[g]}\n{title}", fontsize=9, loc="left")
                    else:
                        ax.set_title(f"\n{title}" if labels else title, fontsize=9)
    fig.tight_layout()
    fig.savefig(output, dpi=80)
    print(f"wrote {output}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prompts_file", help="one prompt per line, as given to fluxflow-generate")
    parser.add_argument("output", help="the PNG to write")
    parser.add_argument("folders", nargs="+", help="fluxflow-generate --output folders, one group of columns each")
    parser.add_argument("--label", action="append", default=[], help="a title per folder, in order")
    parser.add_argument("--n", type=int, default=4, help="seeds per prompt (fluxflow-generate --n)")
    args = parser.parse_args(argv)
    if args.label and len(args.label) != len(args.folders):
        parser.error(f"{len(args.label)} --label for {len(args.folders)} folders: give one per folder or none")
    if not Path(args.prompts_file).is_file():
        parser.error(f"{args.prompts_file}: no such file")
    prompts = [line.strip() for line in Path(args.prompts_file).read_text().splitlines() if line.strip()]
    for folder in args.folders:  # all checked before drawing: a missing image ended the figure in a traceback
        missing = [name for prompt in prompts for seed in range(args.n)
                   if not (Path(folder) / (name := prompt_file_name(prompt, seed, "png"))).is_file()]
        if missing:
            parser.error(f"{folder} lacks {len(missing)} of the {len(prompts) * args.n} images (first: {missing[0]}); "
                         f"make them with fluxflow-generate --prompts-file {args.prompts_file} --n {args.n} --format "
                         f"png --output {folder}")
    draw(prompts, args.folders, args.label, args.n, args.output)


if __name__ == "__main__":
    main()
