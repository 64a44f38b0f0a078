"""`python -m bench.gpu_check` (or `bench/gpu_check.sh`, `make bench-gpu`): the real-size checks a CUDA machine runs
in under 10 minutes.

1. `flow` rows: the flow step of configs/real_256.yaml's model (DiT-B/2-sized, 256 px, f8 latents) at batch 64 and
   128 in bf16, eager and compiled (`training.compile`): s/batch, images/s, FLOPs and MFU of the GPU's dense bf16
   datasheet peak (bench/throughput.py measure_step). The step is what a flow step trains today: frozen VAE encode,
   frozen text encoder, flow model forward and backward, AdamW. Its text encoder is the byte-level one at the CLIP-L
   width (768): a bench machine has no pretrained directory, and a frozen encoder's forward is a small share.
2. `pipeline`: a 2-step pipeline end to end (VAE step, then flow step; `--pipeline-batches` batches each, batch 64,
   256 px, bf16, compiled) on the built-in shapes dataset: wall time over batches, so compilation, loading and the
   end-of-step evaluation are included.
3. `torchrun`: the same flow step on 2 processes (DDP) when 2 GPUs are present; skipped otherwise.

A section that would start after `--budget-s` seconds is skipped and says so (the shell script also stops the whole
run at 10 minutes). Each flow row is a section of its own. A section that raises (a first GPU run's compile error) is
reported under `failed` and the next one runs; the exit code is then 1. bench/results/gpu_check.json is rewritten
after every section, so a run stopped at the 10-minute limit keeps what it measured.
`--dry-run`: the same code at tiny sizes on the CPU, eager only (tests/bench/test_gpu_check.py).
Writes bench/results/gpu_check.json and prints one table.
"""
from __future__ import annotations

# Quiet and offline before anything imports prefect or mlflow (as bench/run.py).
import flows.env  # noqa: F401

import argparse  # noqa: E402
import functools  # noqa: E402
import sys
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from bench.common import (RESULTS_DIR, TINY_MODEL, MachineLoad, device_label, machine, print_table,  # noqa: E402
                          write_result)
from bench.throughput import measure_step  # noqa: E402

REAL_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "real_256.yaml"
BATCHES, DRY_BATCHES = (64, 128), (2, 4)
TEXT_WIDTH = 768  # CLIP-L's, which configs/real_256.yaml names


def real_model(dry_run: bool) -> dict[str, Any]:
    """configs/real_256.yaml's model section with the byte-level text encoder at the CLIP-L width (tiny: TINY_MODEL)."""
    from fluxflow.config.load import read_yaml

    if dry_run:
        return dict(TINY_MODEL)
    model = {k: v for k, v in read_yaml(REAL_CONFIG)["model"].items() if k != "text_encoder"}
    return dict(model, text_embedding_dim=TEXT_WIDTH)


def flow_sections(args, device: torch.device, model: dict, img_size: int) -> list[tuple[str, Callable[[], list]]]:
    """One section per flow row (eager rows first), so that a failing compiled row keeps the eager ones."""
    def row(compile: bool, batch: int) -> list[dict[str, Any]]:
        return [measure_step("flow", img_size, batch, device, compile=compile, model=model,
                             precision="fp32" if args.dry_run else "bf16", label="real_256")]

    return [(f"flow batch {batch}{' compiled' if compile else ''}", functools.partial(row, compile, batch))
            for compile in ([False] if args.dry_run else [False, True])
            for batch in (DRY_BATCHES if args.dry_run else BATCHES)]


def pipeline_config(args, model: dict, img_size: int, nproc: int, output: Path):
    """The 2-step pipeline of section 2 (VAE, flow) on shapes; the flow step alone for the torchrun section."""
    from fluxflow.config import load_config

    batch = 4 if args.dry_run else 64
    steps = [{"name": "vae", "n_epochs": 1, "max_steps": args.pipeline_batches, "train_vae": True},
             {"name": "flow", "n_epochs": 1, "max_steps": args.pipeline_batches, "train_diff": True}]
    raw = {"model": model, "data": {"img_size": img_size},
           "training": {"batch_size": batch, "device": "cpu" if args.dry_run else "cuda",
                        "precision": "fp32" if args.dry_run else "bf16", "compile": not args.dry_run,
                        "distributed": {"nproc_per_node": nproc},
                        "pipeline": {"datasets": {"shapes": {"type": "shapes", "holdout": 16,
                                                             "size": batch * args.pipeline_batches + 16}},
                                     "steps": steps if nproc == 1 else steps[1:]}},
           "output": {"output_path": str(output), "no_samples": True, "log_interval": 10}}
    return load_config(raw).config


def timed_pipeline(args, model: dict, img_size: int, nproc: int) -> dict[str, Any]:
    from fluxflow.train.pipeline import run_pipeline

    with tempfile.TemporaryDirectory(prefix="fluxflow-gpu-check-") as tmp:
        config = pipeline_config(args, model, img_size, nproc, Path(tmp))
        start = time.perf_counter()
        outcomes = run_pipeline(config)
        seconds = time.perf_counter() - start
    batches = sum(o.ref.global_step - (outcomes[i - 1].ref.global_step if i else 0) for i, o in enumerate(outcomes))
    return {"kind": "pipeline" if nproc == 1 else f"torchrun ×{nproc}", "model": "real_256", "img_size": img_size,
            "batch": config.training.batch_size, "device": config.training.device, "precision":
            config.training.precision, "compile": config.training.compile, "s_per_batch": seconds / batches,
            "images_per_s": config.training.batch_size * batches / seconds, "wall_s": seconds,
            "steps": [o.ref.step_name for o in outcomes], "mfu": None,
            "flops_per_step": None}


def run(args) -> dict[str, Any]:
    load, start = MachineLoad(), time.perf_counter()
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        raise SystemExit("bench.gpu_check needs a CUDA GPU (use --dry-run to try it on the CPU at tiny sizes)")
    device = torch.device("cuda" if cuda else "cpu")
    model, img_size = real_model(args.dry_run), 32 if args.dry_run else 256
    rows, skipped, failed = [], [], []
    sections = [*flow_sections(args, device, model, img_size),
                ("pipeline", lambda: [timed_pipeline(args, model, img_size, 1)])]
    if torch.cuda.device_count() >= 2 and not args.dry_run:
        sections.append(("torchrun", lambda: [timed_pipeline(args, model, img_size, 2)]))
    else:
        skipped.append("torchrun: fewer than 2 GPUs")

    def payload(info: dict[str, Any], table: str | None) -> dict[str, Any]:
        return {"benchmark": "gpu_check", "machine": info, "dry_run": args.dry_run, "rows": rows,
                "skipped": skipped, "failed": failed, "seconds": time.perf_counter() - start, "table": table}

    for name, section in sections:
        if time.perf_counter() - start > args.budget_s:
            skipped.append(f"{name}: the {args.budget_s:.0f} s budget was spent")
            continue
        try:
            rows += section()
        except Exception as e:  # one section's failure must not lose the others' figures
            traceback.print_exc()
            failed.append(f"{name}: {type(e).__name__}: {e}")
        write_result("gpu_check", payload({"partial": True}, None), args.results_dir)  # survives the 10-min kill
    info = machine(load.stop())
    table = print_table(f"gpu_check — {device_label(info)}",
                        ["what", "px", "batch", "precision", "compile", "s/batch", "images/s", "TFLOP/step", "MFU"],
                        [[r["kind"], r["img_size"], r["batch"], r["precision"], "yes" if r["compile"] else "no",
                          r["s_per_batch"], r["images_per_s"],
                          r["flops_per_step"] / 1e12 if r["flops_per_step"] else None,
                          f"{100 * r['mfu']:.1f} %" if r["mfu"] else None] for r in rows])
    for line in skipped:
        print(f"skipped: {line}", flush=True)
    for line in failed:
        print(f"FAILED: {line}", flush=True)
    result = payload(info, table)
    write_result("gpu_check", result, args.results_dir)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU, eager only (no GPU needed)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="start no section after this many seconds")
    parser.add_argument("--pipeline-batches", type=int, default=20, help="batches per step of the pipeline rows")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    return 1 if run(parser.parse_args(argv))["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
