"""What every benchmark shares: the machine description, one table printer, one JSON writer, tiny configs.

Each benchmark module has `run(args) -> dict` (the JSON it wrote) and prints exactly one table.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The smallest model that exercises every component: the overhead and resume benchmarks measure the machinery
# around the math, so the math should be small.
TINY_MODEL = {"vae_dim": 8, "feature_maps_dim": 32, "flow_depth": 1, "flow_heads": 2, "text_embedding_dim": 16,
              "text_encoder_depth": 1, "text_max_len": 48, "feature_maps_dim_disc": 8}


def machine() -> dict[str, Any]:
    """Where and when a figure was measured (stored with every result)."""
    import torch

    info = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cuda": torch.cuda.is_available(),
        # Other processes compete for the same cores: the 1-minute load average says how much when a figure was taken.
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_label(info: dict[str, Any]) -> str:
    return info.get("gpu") or f"CPU ({info['cpu']}, {info['cpu_count']} cores, {info['torch_threads']} threads)"


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table (what docs/PERFORMANCE.md quotes), printed and returned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    text = "\n".join([f"### {title}", "", line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *(line(r) for r in cells)])
    print(text, flush=True)
    return text


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value == 0 or 0.01 <= abs(value) < 100_000:
            return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
        return f"{value:.3g}"
    return str(value)


def write_result(name: str, payload: dict[str, Any], results_dir: Path | str = RESULTS_DIR) -> Path:
    path = Path(results_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def median(values: list[float]) -> float:
    return float(statistics.median(values))


class Stopwatch:
    """`with Stopwatch() as sw: ...; sw.seconds` (wall clock, perf_counter)."""

    def __enter__(self) -> Stopwatch:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.seconds = time.perf_counter() - self.start


def tiny_pipeline(output_dir: str | Path, *, img_size: int = 16, batches: int = 2, dataset_size: int = 64,
                  holdout: int = 8, device: str = "cpu", samples: bool = False) -> dict[str, Any]:
    """A 2-step pipeline (VAE, then flow) of `batches` batches each, as a config dict for `load_config`."""
    return {
        "model": dict(TINY_MODEL),
        "data": {"img_size": img_size},
        "training": {
            "batch_size": 4, "max_steps": batches, "device": device, "seed": 0,
            "pipeline": {
                "datasets": {"shapes": {"type": "shapes", "size": dataset_size, "seed": 0, "holdout": holdout}},
                "steps": [{"name": "vae", "n_epochs": 1, "train_vae": True},
                          {"name": "flow", "n_epochs": 1, "train_diff": True}],
            },
        },
        "output": {"output_path": str(output_dir), "log_interval": 1, "no_samples": not samples},
    }
