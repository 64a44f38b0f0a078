"""cache: flow-stage images/s when latents (and text) are encoded every batch vs read from the caches, in one run,
and how long building the caches takes.

Each case is a one-step flow pipeline on the `shapes` dataset, set up by the runner's own functions
(`load_step_data`, `build_trainer`, `attach_caches` into a temporary output directory), so what is timed is what a
flow step does per batch: its DataLoader (rendering images, or reading cached rows) and `Trainer.train_batch`. Arms:
`on the fly` (images in, the frozen VAE encodes them), `latent cache`, and for steps with a frozen text encoder
(`train_diff`) `latent + text cache`. The arms of a case take turns in ROUNDS rounds (the order rotates each round),
each timing batches until MIN_SECONDS have passed and at least MIN_ITERS were run; a busy machine then slows every
arm alike, and the ratio to `on the fly` is the median of the rounds' ratios. The ratio is also given by this
process's CPU time per batch, which other processes on the cores disturb less than wall time (with one torch thread
it is the work done; with more, idle threads' spinning counts too).

Cases: the quickstart's flow step (configs/quickstart.yaml: its model, `train_diff_full`, batch 32) at 32 px, the
same at 64 px (batch 32) and 256 px (batch 8), and the quickstart model with `train_diff` at 32 px. The build row
of each case: the whole set-up of its caches (weight hashes, dataset fingerprint, encoding and writing every item),
timed, over ITEMS_PER_BATCH batches' worth of items.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from bench.common import MachineLoad, device_label, machine, median, print_table, write_result

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
# (label, img_size, batch, step flags): the quickstart's flow step, its size and two larger ones, and train_diff.
CASES = [("quickstart", 32, 32, {"train_diff_full": True}),
         ("quickstart", 64, 32, {"train_diff_full": True}),
         ("quickstart", 256, 8, {"train_diff_full": True}),
         ("quickstart, train_diff", 32, 32, {"train_diff": True})]
ROUNDS, MIN_SECONDS, MIN_ITERS = 3, 1.0, 2
ITEMS_PER_BATCH = 24  # dataset size in batches: what the build row encodes, and enough for every timed round


def case_config(output: Path, img_size: int, batch: int, flags: dict, latents: bool, text: bool):
    from fluxflow.config import load_config

    quickstart = yaml.safe_load(QUICKSTART.read_text())
    step = {"name": "flow", "n_epochs": 1, "cache_latents": latents, "cache_text": text, **flags}
    return load_config({
        "model": quickstart["model"], "data": {"img_size": img_size, "channels": 3},
        "training": {"batch_size": batch, "device": "cpu", "precision": "fp32", "seed": 0,
                     "pipeline": {"datasets": {"shapes": {"type": "shapes", "size": batch * ITEMS_PER_BATCH,
                                                          "holdout": 0}},
                                  "steps": [step]}},
        "output": {"output_path": str(output), "no_samples": True},
        "tracking": {"register_steps": []}}).config  # nothing is registered or promoted: no held-out images needed


class Arm:
    """One way of training the case's flow step: its Trainer, the data it loads, and per-round seconds/batch."""

    def __init__(self, name: str, output: Path, img_size: int, batch: int, flags: dict, latents: bool = False,
                 text: bool = False):
        from fluxflow.train.step_cache import attach_caches
        from fluxflow.train.step_data import load_step_data
        from fluxflow.train.trainer import build_trainer

        self.name, self.config = name, case_config(output, img_size, batch, flags, latents, text)
        self.step = self.config.step("flow")
        self.data = load_step_data(self.config, self.step, torch.device("cpu"))
        self.trainer = build_trainer(self.config, self.step, None, torch.device("cpu"), max_epochs=1)
        start = time.perf_counter()
        attach_caches(self.config, self.step, self.data, self.trainer, say=lambda line: None)  # each arm its own
        self.build_s = time.perf_counter() - start if latents or text else None
        self.laps: list[float] = []  # wall seconds per batch, one figure per round
        self.cpu_laps: list[float] = []  # this process's CPU seconds per batch (all its threads), per round

    def time_round(self, epoch: int) -> None:
        from fluxflow.data import make_loader

        loader = make_loader(self.data.batch_source, self.step.batch_size, 0, 0, epoch)
        n, start, cpu = 0, time.perf_counter(), time.process_time()
        for inputs, captions in loader:
            self.trainer.train_batch(inputs, captions, global_step=n, update=n)
            n += 1
            if time.perf_counter() - start >= MIN_SECONDS and n >= MIN_ITERS:
                break
        self.laps.append((time.perf_counter() - start) / n)
        self.cpu_laps.append((time.process_time() - cpu) / n)


def measure_case(label: str, img_size: int, batch: int, flags: dict, root: Path) -> list[dict[str, Any]]:
    from fluxflow.models.latents import measure_latent_norm
    from fluxflow.data import make_loader

    arms = [Arm("on the fly", root / "live", img_size, batch, flags),
            Arm("latent cache", root / "latents", img_size, batch, flags, latents=True)]
    if flags.get("train_diff") and not flags.get("train_diff_full"):
        arms.append(Arm("latent + text cache", root / "both", img_size, batch, flags, latents=True, text=True))
    live = arms[0]
    images = [x for i, (x, _) in enumerate(make_loader(live.data.train_set, batch, 0, 0)) if i < 4]
    norm = measure_latent_norm(live.trainer.ctx.latent_encoder, images)
    for arm in arms:
        arm.trainer.set_latent_norm(norm)
        arm.time_round(epoch=99)  # warm-up, untimed
        arm.laps.clear()
        arm.cpu_laps.clear()
    for r in range(ROUNDS):
        for k in range(len(arms)):
            arms[(r + k) % len(arms)].time_round(epoch=r)
    rows = []
    for arm in arms:
        ratios = [base / own for base, own in zip(live.laps, arm.laps)]
        cpu_ratios = [base / own for base, own in zip(live.cpu_laps, arm.cpu_laps)]
        s_per_batch = median(arm.laps)
        rows.append({"case": label, "img_size": img_size, "batch": batch, "arm": arm.name,
                     "s_per_batch": s_per_batch, "laps_s": arm.laps, "cpu_laps_s": arm.cpu_laps,
                     "images_per_s": batch / s_per_batch, "ratio": median(ratios),
                     "round_ratios": ratios, "cpu_ratio": median(cpu_ratios),
                     "build_s": arm.build_s, "build_items": len(arm.data.train_set)})
    return rows


def run(args) -> dict[str, Any]:
    load = MachineLoad()
    rows_data = []
    for label, img_size, batch, flags in CASES:
        if args.cache_sizes and img_size not in args.cache_sizes:
            continue
        with tempfile.TemporaryDirectory(prefix="fluxflow-bench-cache-") as tmp:
            rows_data += measure_case(label, img_size, batch, flags, Path(tmp))
    info = machine(load.stop())
    rows = [[r["case"], r["img_size"], r["batch"], r["arm"], r["s_per_batch"], r["images_per_s"], r["ratio"],
             ", ".join(f"{v:.2f}" for v in r["round_ratios"]), r["cpu_ratio"],
             f"{r['build_items']} in {r['build_s']:.2f} s ({r['build_items'] / r['build_s']:,.0f}/s)"
             if r["build_s"] else None] for r in rows_data]
    table = print_table(f"cache — flow stage with and without the caches, {device_label(info)}",
                        ["flow step", "px", "batch", "inputs", "s/batch", "images/s", "× on the fly",
                         "per round", "× by CPU time", "cache build (items, s)"], rows)
    payload = {"benchmark": "cache", "machine": info, "rounds": ROUNDS, "min_seconds": MIN_SECONDS,
               "rows": rows_data, "table": table}
    write_result("cache", payload, args.results_dir)
    return payload


def add_arguments(parser) -> None:
    g = parser.add_argument_group("cache")
    g.add_argument("--cache-sizes", nargs="+", type=int, choices=sorted({c[1] for c in CASES}),
                   help="image sizes of the cache benchmark's cases (default: all)")
