"""A tiny pipeline killed with SIGKILL in a child process at a chosen call (as an OOM kill or a lost node ends a run),
and what a user reads of its output folder: the kill-and-resume tests of tests/train share it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from helpers_tiny import one_thread, tiny_config, tiny_raw

from fluxflow.output_layout import metrics_file, samples_dir
from fluxflow.train.pipeline import run_pipeline

REPO = Path(__file__).resolve().parents[1]

# The pipeline of the config file argv[1], killed where argv[2] says: "write_samples:N" / "evaluate_step:N" (as
# fluxflow/train/step_report.py calls them) die on their N-th call; "-" runs on (FLUXFLOW_TEST_KILL_AT may kill it).
CHILD = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
import fluxflow.train.step_report as step_report
from fluxflow.config import load_config
from fluxflow.train.pipeline import run_pipeline

where, _, nth = sys.argv[2].partition(":")
if where != "-":
    made, calls = getattr(step_report, where), []

    def killed_at_nth_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == int(nth):
            os.kill(os.getpid(), signal.SIGKILL)
        return made(*args, **kwargs)

    setattr(step_report, where, killed_at_nth_call)
run_pipeline(load_config(json.load(open(sys.argv[1]))).config)
"""


def killed_run(tmp_path: Path, out: Path, where: str, steps: list[dict], settings: dict,
               env: dict | None = None) -> None:
    """The pipeline of `steps` (tiny_raw's `settings`) into `out`, killed at `where`."""
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(tiny_raw(out, steps, **settings)))
    child = subprocess.run([sys.executable, "-c", CHILD, str(config_file), where], cwd=REPO, capture_output=True,
                           text=True, timeout=300,
                           env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", **(env or {})))
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr


def uninterrupted_run(out: Path, steps: list[dict], settings: dict) -> Path:
    """`out`, where the same pipeline ran here without a kill: what a killed one must end as once run again."""
    with one_thread():  # as the child: other thread counts round some sums otherwise
        run_pipeline(tiny_config(out, steps, **settings))
    return out


def logged_lines(out: Path, step: str = "s") -> list[tuple]:
    """The metrics file as (epoch, batch, global_step, metrics): what a user reads, without the timestamps."""
    records = map(json.loads, metrics_file(out, step).read_text().splitlines())
    return [(r["epoch"], r["batch"], r["global_step"], r["metrics"]) for r in records]


def sample_files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(samples_dir(out).iterdir())}
