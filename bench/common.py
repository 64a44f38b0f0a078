"""What every benchmark shares: the machine description, one table printer, one JSON writer, tiny configs.

Each benchmark module has `run(args) -> dict` (the JSON it wrote) and prints exactly one table.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from flows.text_table import markdown_table

RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The smallest model that exercises every component: the overhead and resume benchmarks measure the machinery
# around the math, so the math should be small. Its one definition is configs/tiny_test.yaml's (the tests use it).
TINY_MODEL: dict[str, Any] = yaml.safe_load(
    (Path(__file__).resolve().parents[1] / "configs" / "tiny_test.yaml").read_text())["model"]


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages (runnable processes, this benchmark's own included)."""
    return [round(v, 2) for v in os.getloadavg()]


class MachineLoad:
    """How much CPU other processes used while a benchmark ran: the machine's busy time (/proc/stat) minus the
    CPU time of this process and all its descendants, live or waited for (/proc/<pid>/stat), over the wall time.

    `other_cores` 0.0 means the benchmark had the machine to itself; 1.0 means another process kept one core busy
    on average. The load averages are recorded as well (they count this benchmark's own threads too).
    Linux only; elsewhere the CPU figures are None.
    """

    def __init__(self) -> None:
        self.loadavg_start = load_average()
        self.wall_start = time.monotonic()
        self.busy_start, self.own_start = _machine_busy_jiffies(), _tree_jiffies(os.getpid())

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.wall_start
        busy, own = _machine_busy_jiffies(), _tree_jiffies(os.getpid())
        result: dict[str, Any] = {"loadavg_start": self.loadavg_start, "loadavg_end": load_average(),
                                  "wall_s": round(wall, 1), "own_cores": None, "other_cores": None}
        if None not in (busy, own, self.busy_start, self.own_start) and wall > 0:
            tick = os.sysconf("SC_CLK_TCK")
            own_cores = (own - self.own_start) / tick / wall
            result["own_cores"] = round(own_cores, 2)
            result["other_cores"] = round(max(0.0, (busy - self.busy_start) / tick / wall - own_cores), 2)
        return result


def _machine_busy_jiffies() -> int | None:
    """user + nice + system + irq + softirq of all CPUs since boot (steal and idle excluded)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return user + nice + system + irq + softirq


def _tree_jiffies(root: int) -> int | None:
    """CPU time (utime + stime + waited-for children's) of `root` and every live descendant."""
    procs: dict[int, tuple[int, int]] = {}  # pid -> (ppid, jiffies)
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return None
    for entry in entries:
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        rest = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid ... utime stime cutime cstime
        procs[int(entry)] = (int(rest[1]), sum(int(v) for v in rest[11:15]))
    if root not in procs:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += procs[pid][1]
        todo.extend(children.get(pid, []))
    return total


def machine(load: dict[str, Any] | None = None) -> dict[str, Any]:
    """Where and when a figure was measured (stored with every result); `load`: `MachineLoad.stop()`."""
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
        # Other processes compete for the same cores: how much they did while the figures were taken.
        "load": load or {"loadavg_end": load_average()},
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
    """What the table's figures ran on, and how busy the machine was meanwhile."""
    threads = info["torch_threads"]
    where = info.get("gpu") or (f"CPU ({info['cpu']}, {info['cpu_count']} cores, {threads} torch "
                                f"thread{'s' if threads != 1 else ''})")
    return f"{where}; {load_label(info.get('load') or {})}"


def load_label(load: dict[str, Any]) -> str:
    """"load avg 0.4 → 1.9, other processes 0.02 cores" (+ a warning when others used a quarter core or more)."""
    start, end = load.get("loadavg_start"), load.get("loadavg_end")
    text = f"load avg (1 min) {start[0]:.2f} → {end[0]:.2f}" if start else f"load avg (1 min) {end[0]:.2f}"
    other = load.get("other_cores")
    if other is not None:
        text += f", other processes used {other:.2f} cores"
        if other >= 0.25:
            text += " — BUSY MACHINE, figures are pessimistic"
    return text


def print_table(title: str, columns: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-markdown table (what docs/PERFORMANCE.md quotes), printed and returned."""
    text = f"### {title}\n\n" + markdown_table([list(columns), *([_fmt(v) for v in row] for row in rows)])
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


def int_at_least(low: int, multiple_of: int = 1):
    """An argparse type: an integer >= `low` (and a multiple of `multiple_of`). A bad value is then a usage line, exit
    2, before anything is measured (it was a traceback, some only after minutes of measuring)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low or value % multiple_of:
            kind = f"a multiple of {multiple_of}" if multiple_of > 1 else "an integer"
            raise argparse.ArgumentTypeError(f"must be {kind} >= {low}, not {text!r}")
        return value
    return parse


def results_dir_problem(path: Path) -> str | None:
    """Why the JSON results cannot go into the folder `path` (made here when missing), or None: asked before the
    benchmarks run (a file of that name failed with FileExistsError after the measurement)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"{path} is a file, not a folder"
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror}"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} cannot be written"
    return None


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
        # Registering and promoting the flow step's model is work of its own (an MLflow model logged, two
        # evaluations), not orchestration overhead: measured apart (docs/PERFORMANCE.md).
        "tracking": {"register_steps": []},
    }
