"""Where a run's files lie under its output directory: the one place for their names (the original tool's layout,
README.md "What a run writes"). No torch here: the flow layer, the checkpoint files and the caches all
read it, and none of them should need the training core to know a file name.

    <output>/checkpoints/<step>/   latest.pt, latest.prev.pt, final.pt, ref.json (fluxflow/checkpoints/step_files.py)
    <output>/graph/training_metrics_<step>.jsonl
    <output>/samples/              sample images (names: fluxflow/sampling/sample_files.py)
    <output>/eval_cache/           the real images' statistics held-out evaluation compares with
"""
from __future__ import annotations

from pathlib import Path


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir(output_dir: str | Path, step_name: str) -> Path:
    return checkpoints_dir(output_dir) / step_name


def metrics_file(output_dir: str | Path, step_name: str) -> Path:
    return Path(output_dir) / "graph" / f"training_metrics_{step_name}.jsonl"


def samples_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "samples"


def eval_cache_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "eval_cache"
