"""throughput: images/s of the per-batch training steps, exactly as the step runner calls them, and the data loader.

For each step kind (`vae`, `vae_gan_r1`: VAE + GAN with R1 on every step, the worst case of lazy R1, and `flow`:
rectified flow on frozen-VAE latents, text encoder frozen) the models, optimizers (fused AdamW), EMA and
`StepContext` are built by the same functions the step runner uses, and `train_vae_batch` / `train_flow_batch` run on a
fixed batch of real `shapes` images (per-batch caption tokenization and EMA updates included, data loading excluded: the
`data` rows time the shapes loader on its own). After warm-up, steps are timed until MIN_SECONDS have passed (at least
MIN_ITERS steps, or one step when it alone takes LONG_STEP_S); on CUDA the clock stops after a device synchronize. FLOPs
of one step are counted with `torch.utils.flop_counter.FlopCounterMode` (matmuls and convolutions, forward and backward,
including the frozen encoder's forward in the flow step), on one image times the batch size. On CUDA the model FLOP
utilisation (MFU) is achieved FLOP/s over the GPU's dense bf16 peak; on CPU it is achieved FLOP/s over the `matmul` row
(the best n=1024 matmul rate measured in the same run, same precision). CPU runs a small subset (documented in
docs/PERFORMANCE.md: about a minute on 2 idle cores). CUDA runs 64 and 256 px at batch sizes 8-64 under bf16 autocast,
eager and with `torch.compile` (R1's double backward does not compile: with R1 on, the discriminator stays eager). The
`seed-size` rows (VAE ≈ 6.9 M parameters, flow ≈ 1.7 M, batch 4, 64 px) are the comparison with the original tool's
figures.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from bench.common import MachineLoad, device_label, int_at_least, machine, print_table, write_result
from fluxflow.config.schema import ModelConfig

KINDS = ("vae", "vae_gan_r1", "flow")
STEP_FLAGS = {
    "vae": {"train_vae": True},
    "vae_gan_r1": {"train_vae": True, "gan_training": True, "r1_gamma": 1.0, "r1_interval": 1},
    "flow": {"train_diff": True},
}
CPU_CASES = [(64, 8), (64, 32), (256, 8)]  # (img_size, batch): the CPU subset (~1 minute on 2 idle cores)
GRID_SIZES, GRID_BATCHES = (64, 256), (8, 16, 32, 64)
# Image sizes are multiples of the default model's downscale x patch_size: load_config refuses others.
IMAGE_UNIT = ModelConfig().downscale * ModelConfig().patch_size
GPU_CASES = [(size, batch) for size in GRID_SIZES for batch in GRID_BATCHES]  # the full grid
SEED_SIZE_MODEL = {"vae_dim": 114}  # VAE 6.89 M parameters (the original's ≈ 6.8 M); flow 1.74 M (≈ 1.8 M)
SEED_SIZE_CASE = (64, 4)
# The original tool (fluxflow-training 0.8.1) measured on this kind of 2-core machine, seconds per batch at batch 4,
# 64 px, CPU (docs/PERFORMANCE.md).
ORIGINAL_S_PER_BATCH = {"vae": 0.91, "vae_gan_r1": 1.80, "flow": 0.40}
MIN_SECONDS, MIN_ITERS, LONG_STEP_S = 1.0, 2, 3.0
# Dense bf16 peak FLOP/s by GPU name (vendor data sheets); an unknown GPU gets no MFU rather than a guess.
PEAK_BF16 = {"H200": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "A100": 312e12,
             "L40S": 362e12, "L4": 121e12}


def peak_flops(gpu_name: str | None) -> float | None:
    if not gpu_name:
        return None
    for key, value in PEAK_BF16.items():  # most specific names first
        if key in gpu_name:
            return value
    return None


def step_config(kind: str, img_size: int, batch: int, model: dict | None = None, precision: str = "auto",
                compile: bool = False):
    from fluxflow.config import load_config

    step = {"name": kind, "n_epochs": 1, **STEP_FLAGS[kind]}
    config = load_config({"model": model or {}, "data": {"img_size": img_size},
                          "training": {"batch_size": batch, "precision": precision, "compile": compile,
                                       "pipeline": {"steps": [step]}}}).config
    return config, config.step(kind)


class StepBench:
    """One step kind at one size, built by the step runner's own `build_trainer`; `run(i)` is one training batch."""

    def __init__(self, kind: str, img_size: int, batch: int, device: torch.device, *, compile: bool = False,
                 model: dict | None = None, precision: str = "auto"):
        from fluxflow.data import ShapesDataset
        from fluxflow.models.latents import measure_latent_norm
        from fluxflow.train.trainer import build_trainer

        # `compile`: training.compile, as a run sets it (fluxflow/train/speed.py; R1 keeps the discriminator eager).
        config, step = step_config(kind, img_size, batch, model, precision, compile)
        self.kind, self.device, self.config = kind, device, config
        torch.manual_seed(0)
        data = ShapesDataset(batch, 0, img_size)
        self.images = torch.stack([data[i][0] for i in range(batch)]).to(device)
        self.captions = [data[i][1] for i in range(batch)]
        self.trainer = build_trainer(config, step, None, device, max_epochs=step.n_epochs)
        self.models, self.ctx = self.trainer.models, self.trainer.ctx
        if kind == "flow":
            self.trainer.set_latent_norm(measure_latent_norm(self.ctx.latent_encoder, self.images))

    def run(self, i: int) -> dict[str, torch.Tensor]:
        return self.trainer.train_batch(self.images, self.captions, global_step=i, update=i)

    def parameters(self) -> dict[str, int]:
        from fluxflow.models import count_parameters

        return {name: count_parameters(m) for name, m in self.models.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(bench: StepBench, warmup: int) -> tuple[float, list[float]]:
    """(mean seconds per batch, each timed batch's seconds) after `warmup` untimed batches: batches until
    MIN_SECONDS have passed and MIN_ITERS were run, or a single batch when it alone took LONG_STEP_S (the 256 px CPU
    rows: a second 15 s batch would add time, not information). On CUDA the per-batch times are host times (the
    queue runs ahead); the mean is exact (the clock stops after a synchronize)."""
    for i in range(warmup):
        bench.run(i)
    _sync(bench.device)
    laps, start = [], time.perf_counter()
    while True:
        lap = time.perf_counter()
        bench.run(warmup + len(laps))
        laps.append(time.perf_counter() - lap)
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_SECONDS and (len(laps) >= MIN_ITERS or elapsed >= LONG_STEP_S):
            break
    _sync(bench.device)
    return (time.perf_counter() - start) / len(laps), laps


def count_flops(bench: StepBench) -> int | None:
    """FLOPs of one step at the bench's batch size; None for R1 steps (FlopCounterMode's hooks reject
    autograd.grad's double backward).

    Counted on a batch of one and multiplied by the batch size: every counted op (convolutions, matmuls, attention)
    is linear in the batch (tests/bench/test_bench.py checks that the two agree exactly), and one step at batch 1 costs
    a fraction of a full step, which matters at 256 px on a CPU.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if bench.ctx.step.gan_training and bench.ctx.step.r1_gamma > 0:
        return None
    images, captions = bench.images, bench.captions
    bench.images, bench.captions = images[:1], captions[:1]
    try:
        counter = FlopCounterMode(display=False)
        with counter:
            bench.run(10_000)
    finally:
        bench.images, bench.captions = images, captions
    return int(counter.get_total_flops()) * images.shape[0]


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 1024, windows: int = 5,
                seconds: float = 0.15) -> dict[str, Any]:
    """FLOP/s of an n×n matmul in `dtype`, the best of `windows` short windows: what this device reaches on the
    easiest dense op when nothing else disturbs it.

    On CPU it stands in for a peak: the steps' FLOP/s divided by it is the CPU's 'MFU' column.
    """
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    _sync(device)
    rates, total = [], 0
    for _ in range(windows):
        iters, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or iters < 2:
            a @ b
            iters += 1
            if device.type == "cuda" and iters % 50 == 0:
                _sync(device)
        _sync(device)
        rates.append(2 * n ** 3 * iters / (time.perf_counter() - start))
        total += iters
    return {"kind": "matmul", "model": f"{n}×{n} reference", "img_size": None, "batch": None,
            "device": device.type, "precision": "bf16" if dtype == torch.bfloat16 else "fp32", "compile": False,
            "s_per_batch": None, "images_per_s": None, "iters": total, "flops_per_step": 2 * n ** 3,
            "flops_per_s": max(rates), "window_flops_per_s": rates, "mfu": None}


def measure_step(kind: str, img_size: int, batch: int, device: torch.device, *, compile: bool = False,
                 model: dict | None = None, flops: bool = True, label: str = "default",
                 cpu_peak: float | None = None, precision: str = "auto") -> dict[str, Any]:
    """One row: s/batch, images/s, FLOPs and utilisation (GPU: of the datasheet bf16 peak; CPU: of `cpu_peak`, the
    measured matmul rate)."""
    bench = StepBench(kind, img_size, batch, device, compile=compile, model=model, precision=precision)
    warmup = 1 if device.type == "cpu" else (4 if compile else 2)
    s_per_batch, laps = time_steps(bench, warmup)
    # Compiled modules are counted eagerly-equivalent: the counter would trace into compiled code, so count on an
    # eager twin (same FLOPs by construction: compile changes kernels, not math).
    n_flops = count_flops(bench if not compile else StepBench(kind, img_size, batch, device, model=model)) \
        if flops else None
    achieved = n_flops / s_per_batch if n_flops else None
    bf16 = bench.ctx.amp_dtype == torch.bfloat16
    peak = (peak_flops(torch.cuda.get_device_name(device)) if bf16 else None) if device.type == "cuda" else cpu_peak
    return {"kind": kind, "model": label, "img_size": img_size, "batch": batch, "device": device.type,
            "precision": "bf16" if bf16 else "fp32", "compile": compile, "s_per_batch": s_per_batch,
            "images_per_s": batch / s_per_batch, "iters": len(laps), "laps_s": laps,
            "flops_per_step": n_flops, "flops_per_s": achieved,
            "mfu": achieved / peak if achieved and peak else None,
            "mfu_basis": "datasheet bf16 dense peak" if device.type == "cuda" else
            f"measured {'bf16' if bf16 else 'fp32'} matmul rate",
            "parameters": bench.parameters()}


def measure_loader(img_size: int, batch: int, batches: int = 4) -> dict[str, Any]:
    """images/s of the shapes loader (rendering + collation, workers=0) on its own."""
    from fluxflow.data import ShapesDataset, make_loader

    loader = make_loader(ShapesDataset(batch * batches, 0, img_size), batch, workers=0, seed=0, pin_memory=False)
    start = time.perf_counter()
    n = sum(images.shape[0] for images, _ in loader)
    seconds = time.perf_counter() - start
    return {"kind": "data", "model": "shapes loader", "img_size": img_size, "batch": batch, "device": "cpu",
            "precision": "—", "compile": False, "s_per_batch": seconds / batches, "images_per_s": n / seconds,
            "iters": batches, "flops_per_step": None, "flops_per_s": None, "mfu": None}


def plan(args, cuda: bool) -> list[dict[str, Any]]:
    """The measurements to take: (kind, size, batch, device, compile, model) dicts."""
    kinds = args.kinds or list(KINDS)
    if args.sizes or args.batch_sizes:  # a grid; the one not given takes the full grid's values
        cases = [(s, b) for s in args.sizes or GRID_SIZES for b in args.batch_sizes or GRID_BATCHES]
    else:
        cases = GPU_CASES if cuda else CPU_CASES
    device = "cuda" if cuda else "cpu"
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile] if cuda else [False]
    todo = [dict(kind=k, img_size=s, batch=b, device=device, compile=c, precision=args.precision)
            for c in compiles for (s, b) in cases for k in kinds]
    if not args.no_seed_size:
        todo += [dict(kind=k, img_size=SEED_SIZE_CASE[0], batch=SEED_SIZE_CASE[1], device="cpu", compile=False,
                      model=SEED_SIZE_MODEL, label="seed-size", precision=args.precision) for k in kinds]
    return todo


def run(args) -> dict[str, Any]:
    load = MachineLoad()
    cuda = torch.cuda.is_available() and not args.cpu
    todo = plan(args, cuda)
    rows_data = []
    peaks: dict[str, float] = {}
    for device in sorted({t["device"] for t in todo}):
        bf16 = device == "cuda" and args.precision != "fp32" or args.precision == "bf16"
        reference = matmul_rate(torch.device(device), torch.bfloat16 if bf16 else torch.float32)
        peaks[device] = reference["flops_per_s"]
        rows_data.append(reference)
    for size in sorted({t["img_size"] for t in todo}):
        rows_data.append(measure_loader(size, 32))
    for item in todo:
        item = dict(item)
        device = torch.device(item.pop("device"))
        rows_data.append(measure_step(device=device, cpu_peak=peaks.get("cpu"), **item))
    info = machine(load.stop())
    rows = []
    for r in rows_data:
        original = ORIGINAL_S_PER_BATCH.get(r["kind"]) if r["model"] == "seed-size" else None
        rows.append([r["kind"], r["model"], r["device"], r["precision"], "yes" if r["compile"] else "no",
                     r["img_size"], r["batch"], r["s_per_batch"], r["images_per_s"],
                     r["flops_per_step"] / 1e9 if r["flops_per_step"] else None,
                     r["flops_per_s"] / 1e9 if r["flops_per_s"] else None,
                     f"{100 * r['mfu']:.1f} %" if r["mfu"] else None,
                     f"{original / r['s_per_batch']:.2f}x" if original else None])
    table = print_table(
        f"throughput — {device_label(info)}",
        ["step", "model", "device", "precision", "compile", "px", "batch", "s/batch", "images/s", "GFLOP/step",
         "GFLOP/s", "MFU¹", "speed vs original²"], rows)
    print("¹ CUDA: of the GPU's dense bf16 datasheet peak (bf16 rows only); CPU: of the measured matmul row (same "
          "precision).\n"
          "² original s/batch ÷ ours, same parameter counts, batch 4, 64 px, CPU (see docs/PERFORMANCE.md for why "
          "equal parameter counts are not equal FLOPs).", flush=True)
    payload = {"benchmark": "throughput", "machine": info, "min_seconds": MIN_SECONDS, "rows": rows_data,
               "original_s_per_batch": ORIGINAL_S_PER_BATCH, "table": table}
    write_result("throughput", payload, args.results_dir)
    return payload


def add_arguments(parser) -> None:
    g = parser.add_argument_group("throughput")
    g.add_argument("--kinds", nargs="+", choices=KINDS, help="step kinds (default: all)")
    g.add_argument("--sizes", nargs="+", type=int_at_least(IMAGE_UNIT, multiple_of=IMAGE_UNIT),
                   help="image sizes; with either option the plan is the grid sizes × batch sizes, the other one "
                        "defaulting to 64 256 / 8 16 32 64 (default without both: the CPU subset, or that full "
                        "grid on CUDA)")
    g.add_argument("--batch-sizes", nargs="+", type=int_at_least(1), help="batch sizes (see --sizes)")
    g.add_argument("--compile", choices=("off", "on", "both"), default="both",
                   help="CUDA only: torch.compile off, on, or both (default)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="training.precision of the measured steps (auto: bf16 autocast on CUDA, fp32 on CPU)")
    g.add_argument("--cpu", action="store_true", help="measure on the CPU even when a GPU is present")
    g.add_argument("--no-seed-size", action="store_true", help="skip the comparison rows with the original's sizes")
