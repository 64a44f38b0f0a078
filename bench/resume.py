"""resume: wall time from process start to the first trained batch, resuming at batch 0 and at batch 10,000.

A `shapes` dataset of 1,000,000 items (generated on demand, nothing on disk) at batch size 8 has 125,000 batches per
epoch. We train one batch to get a real `latest.pt`, then write two copies that differ only in the saved position
(epoch 0, batch 0 and epoch 0, batch 10,000). Each trial copies one into place and starts a fresh Python process
that runs the real `run_step`: it loads the checkpoint, rebuilds models, optimizers and the sampler at the saved
position, trains one batch and stops. The parent clocks from just before it starts the process to the moment the
child's tracker sees the first batch finished (wall clock, `time.time()` on both sides of one machine).

Resuming must not depend on the batch index: the sampler slices one permutation of the epoch (one `randperm`), and
no skipped batch is ever loaded. Reported: the median over trials of each phase (process start → imports done →
step started → first batch) at both positions, and the difference.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import TINY_MODEL, MachineLoad, device_label, int_at_least, machine, median, print_table, write_result

STEP = "vae"


def resume_config(output_dir: Path, dataset_size: int, batch_size: int) -> dict[str, Any]:
    return {
        "model": dict(TINY_MODEL),
        "data": {"img_size": 32},
        "training": {"batch_size": batch_size, "device": "cpu", "seed": 0, "pipeline": {
            "datasets": {"big": {"type": "shapes", "size": dataset_size, "seed": 0, "holdout": 0}},
            "steps": [{"name": STEP, "n_epochs": 1, "train_vae": True}]}},
        "output": {"output_path": str(output_dir), "log_interval": 1, "checkpoint_save_interval": 1,
                   "no_samples": True},
    }


class StopAfterBatch(Exception):
    pass


class FirstBatchTracker:
    """A tracker that records when the step starts and stops the run once `stop_at` batches are logged."""

    def __init__(self, stop_at: int = 1):
        self.stop_at, self.logged, self.times = stop_at, 0, {}

    def step_started(self, step, step_key, n_steps, resumed) -> None:
        self.times["step_started"] = time.time()
        self.times["resumed"] = resumed

    def log_metrics(self, metrics, progress) -> None:
        self.logged += 1
        if self.logged >= self.stop_at:
            self.times.update(first_batch=time.time(), batch=progress.batch, epoch=progress.epoch)
            raise StopAfterBatch

    def log_image(self, path) -> None:
        pass

    def log_artifact(self, path) -> None:
        pass

    def step_finished(self, ref, result) -> None:
        pass

    def warn(self, key, message) -> None:
        pass


def run_until(config_dict: dict, stop_at: int) -> dict[str, Any]:
    """Run the step in this process until `stop_at` batches are logged; returns the tracker's times."""
    from fluxflow.config.run_config import resolve_run_config
    from fluxflow.train.step_run import run_step

    tracker = FirstBatchTracker(stop_at)
    try:
        run_step(resolve_run_config(config_dict, device="cpu").config, STEP, None, tracker=tracker)
    except StopAfterBatch:
        return tracker.times
    raise RuntimeError("the step finished before the expected batch was logged")


def child(config_path: str) -> None:
    """`python -m bench.resume --child CONFIG`: resume and print one JSON line of timestamps."""
    from fluxflow.train.step_run import run_step  # noqa: F401  (torch and the core: what any trainer process imports)

    imported = time.time()
    times = run_until(json.loads(Path(config_path).read_text()), stop_at=1)
    print("RESUME_TIMES " + json.dumps({"imports_done": imported, **times}), flush=True)


def prepare(workdir: Path, dataset_size: int, batch_size: int, positions: list[int]) -> tuple[Path, dict[int, Path]]:
    """Train to a real latest.pt, then write one copy per resume position."""
    from fluxflow.checkpoints.io import load_checkpoint, save_checkpoint
    from fluxflow.checkpoints.step_files import plan_step
    from fluxflow.config import load_config

    config = resume_config(workdir / "run", dataset_size, batch_size)
    config_path = workdir / "config.json"
    config_path.write_text(json.dumps(config))
    run_until(config, stop_at=2)  # latest.pt is written after batch 1; stop in the log call of batch 2
    latest = plan_step(load_config(config).config, STEP).latest
    state = load_checkpoint(latest)
    copies = {}
    for batch in positions:
        meta = state["pipeline_metadata"]
        meta["batch"] = batch
        copies[batch] = workdir / f"latest_at_{batch}.pt"
        save_checkpoint(state, copies[batch])
    return config_path, copies


def trial(config_path: Path, copy: Path, latest: Path) -> dict[str, float]:
    shutil.copyfile(copy, latest)
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "bench.resume", "--child", str(config_path)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESUME_TIMES ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"resume child failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n"
                           f"{done.stderr[-2000:]}")
    t = json.loads(line.split(" ", 1)[1])
    return {"imports_s": t["imports_done"] - start, "setup_s": t["step_started"] - t["imports_done"],
            "first_batch_s": t["first_batch"] - t["step_started"], "total_s": t["first_batch"] - start,
            "resumed_at_batch": t["batch"] - 1, "resumed": t["resumed"]}


def run(args) -> dict[str, Any]:
    from fluxflow.config import load_config
    from fluxflow.checkpoints.step_files import plan_step

    load = MachineLoad()
    positions = [0, args.resume_batch]
    workdir = Path(tempfile.mkdtemp(prefix="fluxflow-bench-resume-"))
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):  # the runner's console lines
            config_path, copies = prepare(workdir, args.dataset_size, args.resume_batch_size, positions)
        latest = plan_step(load_config(json.loads(config_path.read_text())).config, STEP).latest
        trials: dict[int, list[dict]] = {b: [] for b in positions}
        for _ in range(args.trials):
            for batch in positions:  # alternate positions so drift hits both
                t = trial(config_path, copies[batch], latest)
                if t["resumed_at_batch"] != batch or not t["resumed"]:
                    raise RuntimeError(f"expected to resume at batch {batch}, the child trained batch "
                                       f"{t['resumed_at_batch']} (resumed={t['resumed']})")
                trials[batch].append(t)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    phases = ("imports_s", "setup_s", "first_batch_s", "total_s")
    medians = {b: {p: median([t[p] for t in trials[b]]) for p in phases} for b in positions}
    info = machine(load.stop())
    rows = [[f"{b:,}", *(medians[b][p] for p in phases)] for b in positions]
    rows.append(["difference", *(medians[positions[1]][p] - medians[0][p] for p in phases)])
    table = print_table(
        f"resume — shapes dataset of {args.dataset_size:,} items, batch {args.resume_batch_size} "
        f"({args.dataset_size // args.resume_batch_size:,} batches/epoch), median of {args.trials} trials, "
        f"{device_label(info)}",
        ["resume at batch", "start → imports s", "imports → step started s", "step started → first batch s",
         "start → first batch s"], rows)
    payload = {"benchmark": "resume", "machine": info, "dataset_size": args.dataset_size,
               "batch_size": args.resume_batch_size, "trials": {str(b): trials[b] for b in positions},
               "medians": {str(b): medians[b] for b in positions}, "table": table}
    write_result("resume", payload, args.results_dir)
    return payload


def add_arguments(parser) -> None:
    g = parser.add_argument_group("resume")
    g.add_argument("--trials", type=int_at_least(1), default=3, help="trials per resume position")
    g.add_argument("--dataset-size", type=int_at_least(1), default=1_000_000, help="items in the shapes dataset")
    g.add_argument("--resume-batch", type=int_at_least(1), default=10_000,
                   help="the far resume position, a batch of the dataset's one epoch")
    g.add_argument("--resume-batch-size", type=int_at_least(1), default=8, help="batch size of the resumed step")


def arguments_problem(args) -> str | None:
    """--resume-batch past the batches of the dataset (the sampler raised after the first run had trained), or a
    dataset of fewer than the 2 batches the checkpoint to resume from is trained on."""
    batches = args.dataset_size // args.resume_batch_size
    of = (f"--dataset-size {args.dataset_size} at --resume-batch-size {args.resume_batch_size} is {batches} "
          f"batch{'' if batches == 1 else 'es'}")
    if batches < 2:
        return f"resume: {of}; it needs 2 at least"
    if args.resume_batch >= batches:
        return f"resume: --resume-batch {args.resume_batch} is past the last batch: {of} (0..{batches - 1})"
    return None


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        sys.exit("usage: python -m bench.resume --child CONFIG (run the benchmark with `python -m bench.run resume`)")
