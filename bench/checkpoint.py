"""checkpoint: save and load time and file size per component set, through the core's one checkpoint writer.

A checkpoint holds what the runner's `checkpoint_state` holds: model state dicts, AdamW state (both moments, created
by one optimizer step), EMA shadows of the components a step of that kind keeps, the RNG state and the pipeline
metadata. For each component set:
- save: `save_checkpoint` (temp file, fsync, atomic rename, directory fsync) of `latest.pt`;
- finalize: `finalize(latest, final)`: the immutable `final.pt` copy and its sha256 (the end of every step);
- load: `load_checkpoint` (`torch.load(weights_only=True)`) and `load_state_dict` into fresh modules and optimizers,
  which is what a resume or the next step does.
Median of `--checkpoint-trials` repetitions (each one's seconds in the JSON's `laps_s`). Reads come from the page
cache (the file was just written): this is the CPU cost of (de)serialising, not cold-disk time.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.common import MachineLoad, device_label, int_at_least, machine, median, print_table, write_result
from bench.throughput import SEED_SIZE_MODEL

# component set -> (components, trained components, optimizer groups with their components, EMA components)
COMPONENT_SETS: dict[str, dict[str, Any]] = {
    "vae": {"models": ["compressor", "expander"], "optimizers": {"vae": ["compressor", "expander"]},
            "ema": ["compressor", "expander"]},
    "vae+gan": {"models": ["compressor", "expander", "discriminator"],
                "optimizers": {"vae": ["compressor", "expander"], "discriminator": ["discriminator"]},
                "ema": ["compressor", "expander"]},
    "flow": {"models": ["compressor", "expander", "flow_processor", "text_encoder"],
             "optimizers": {"flow": ["flow_processor"]}, "ema": ["compressor", "expander", "flow_processor"]},
    "all": {"models": ["compressor", "expander", "flow_processor", "text_encoder", "discriminator"],
            "optimizers": {"vae": ["compressor", "expander"], "discriminator": ["discriminator"],
                           "flow": ["flow_processor"], "text_encoder": ["text_encoder"]},
            "ema": ["compressor", "expander", "flow_processor", "text_encoder"]},
}
MODELS = {"default": {}, "seed-size": SEED_SIZE_MODEL}


def build(set_name: str, model: dict):
    from fluxflow.config.schema import ModelConfig
    from fluxflow.train.ema import EMA
    from fluxflow.models import build_component
    from fluxflow.train.optim import make_optimizer

    spec, cfg = COMPONENT_SETS[set_name], ModelConfig(**model)
    torch.manual_seed(0)
    models = {n: build_component(n, cfg, 3) for n in spec["models"]}
    optimizers = {}
    for group, names in spec["optimizers"].items():
        params = [p for n in names for p in models[n].parameters()]
        opt = make_optimizer(None, params, 1e-4)
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()  # creates exp_avg / exp_avg_sq, as after any trained batch
        opt.zero_grad(set_to_none=True)
        optimizers[group] = opt
    emas = {n: EMA(models[n], decay=0.999) for n in spec["ema"]}
    return models, optimizers, emas


def state_of(models, optimizers, emas) -> dict[str, Any]:
    from fluxflow.checkpoints.rng_state import capture_rng_state

    return {"epoch": 1, "global_step": 1000,
            "models": {n: m.state_dict() for n, m in models.items()},
            "optimizers": {g: o.state_dict() for g, o in optimizers.items()}, "schedulers": {},
            "ema": {n: e.state_dict() for n, e in emas.items()}, "latent_norm": None,
            "pipeline_metadata": {"current_step": 0, "current_step_name": "bench", "step_start_epoch": 0,
                                  "current_step_epoch": 1, "batch": 0, "step_metrics": {}, "seed": 0,
                                  "rng": capture_rng_state(), "completed": True}}


def measure(set_name: str, model_label: str, trials: int, workdir: Path) -> dict[str, Any]:
    from fluxflow.checkpoints.io import finalize, load_checkpoint, save_checkpoint
    from fluxflow.models import count_parameters

    models, optimizers, emas = build(set_name, MODELS[model_label])
    fresh_models, fresh_optimizers, _ = build(set_name, MODELS[model_label])
    latest, final = workdir / "latest.pt", workdir / "final.pt"
    save_s, finalize_s, load_s = [], [], []
    for _ in range(trials):
        final.unlink(missing_ok=True)
        start = time.perf_counter()
        save_checkpoint(state_of(models, optimizers, emas), latest)
        save_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        finalize(latest, final)
        finalize_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        state = load_checkpoint(latest)
        for n, m in fresh_models.items():
            m.load_state_dict(state["models"][n])
        for g, o in fresh_optimizers.items():
            o.load_state_dict(state["optimizers"][g])
        load_s.append(time.perf_counter() - start)
    return {"set": set_name, "model": model_label, "components": list(models),
            "parameters": sum(count_parameters(m) for m in models.values()),
            "bytes": latest.stat().st_size, "save_s": median(save_s), "finalize_s": median(finalize_s),
            "load_s": median(load_s), "trials": trials,
            "laps_s": {"save": save_s, "finalize": finalize_s, "load": load_s}}  # every trial's, as measured


def run(args) -> dict[str, Any]:
    load = MachineLoad()
    workdir = Path(tempfile.mkdtemp(prefix="fluxflow-bench-checkpoint-"))
    try:
        results = [measure(s, m, args.checkpoint_trials, workdir) for m in MODELS for s in COMPONENT_SETS]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    info = machine(load.stop())
    rows = [[r["set"], r["model"], f"{r['parameters'] / 1e6:.2f} M", f"{r['bytes'] / 2**20:.1f} MiB", r["save_s"],
             r["finalize_s"], r["load_s"]] for r in results]
    table = print_table(
        f"checkpoint — median of {args.checkpoint_trials}, files in {Path(tempfile.gettempdir())}, "
        f"{device_label(info)}",
        ["components", "model", "parameters", "file size", "save s (atomic, fsync)", "finalize s (copy + sha256)",
         "load s (into modules)"], rows)
    payload = {"benchmark": "checkpoint", "machine": info, "rows": results, "table": table}
    write_result("checkpoint", payload, args.results_dir)
    return payload


def add_arguments(parser) -> None:
    g = parser.add_argument_group("checkpoint")
    g.add_argument("--checkpoint-trials", type=int_at_least(1), default=3,
                   help="save/load repetitions per component set")
