"""Running the real `fluxflow-train` CLI as a child in a session of its own, for the tests that signal, kill or
starve it: a one-step VAE pipeline of many tiny batches, the child's environment, and its metrics file."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from helpers_tiny import tiny_raw
from process_groups import alive, child_pids, kill_all

REPO = Path(__file__).resolve().parents[1]


def write_vae_pipeline(directory: Path, n_batches: int, checkpoint_every: int, experiment: str) -> tuple[Path, Path]:
    """(config file, output directory) of one VAE step `warm` of `n_batches` batches, logged at every batch."""
    out = directory / "out"
    raw = tiny_raw(out, [{"name": "warm", "n_epochs": 1, "train_vae": True}], dataset_size=4 * n_batches,
                   checkpoint_save_interval=checkpoint_every, no_samples=True)
    raw["tracking"] = {"experiment_name": experiment}
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    return config, out


def child_env(**values: str) -> dict[str, str]:
    """This environment (MLflow store of the test), one torch thread, this checkout first on the path, `values`."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **values)


def start_train(config: Path, env: dict, log: Path, **popen) -> subprocess.Popen:
    """`fluxflow-train --config CONFIG --quiet` in a session of its own (its pid is its process group), output to
    `log`: a file, not a pipe, so that a leftover process holding it open cannot keep the test waiting."""
    with open(log, "w") as sink:
        return subprocess.Popen([sys.executable, "-m", "flows.cli_train", "--config", str(config), "--quiet"],
                                cwd=config.parent, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                start_new_session=True, **popen)


@contextlib.contextmanager
def running_train(config: Path, env: dict, log: Path):
    """`start_train`, its process group killed on the way out whatever happened."""
    child = start_train(config, env, log)
    try:
        yield child
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def kill_group_when(child: subprocess.Popen, ready, what: str, timeout: float = 120) -> list[int]:
    """SIGKILL the child's process group as soon as `ready()` holds; assert that no child of it (in whatever
    session: the temporary Prefect server) outlives it. Returns those children's pids."""
    deadline = time.monotonic() + timeout
    while not ready() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.poll() is None, f"the run ended before {what}"
    assert ready(), f"not {what} within {timeout} s"
    children = child_pids(child.pid)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    time.sleep(0.5)
    outlived = [pid for pid in children if alive(pid)]
    kill_all(outlived)
    assert not outlived, "a child of the killed run outlived it"
    return children


def output_of_success(child: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    """Wait for the child's end; its output, once asserted that it exited 0."""
    child.wait(timeout=timeout)
    output = log.read_text(errors="replace")
    assert child.returncode == 0, output[-3000:]
    return output


def training_records(out: Path) -> list[dict]:
    """The training lines of step `warm`'s metrics file (evaluations have lines of their own)."""
    path = out / "graph" / "training_metrics_warm.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    return [record for record in records if "vae_loss" in record["metrics"]]
