"""startup: the whole `fluxflow-train` process against the whole bare-runner process, on configs/tiny_test.yaml.

Where `overhead` times the flow inside one long-lived process, this times what a user pays per invocation: a new
process, its imports, the temporary Prefect server, the MLflow store, the flow and task bookkeeping, and the exit.

    flow:  fluxflow-train --config configs/tiny_test.yaml --output-dir <fresh> --quiet
    bare:  python -c "run_pipeline(load_config('configs/tiny_test.yaml').config)"   (output to a fresh directory)

Each arm runs in alternating pairs (flow, bare), (bare, flow), ... into fresh output directories, in two settings of
the MLflow store: `empty` (each run in a new working directory, so its ./mlflow.db is new) and `existing` (every run
in one directory whose ./mlflow.db the warm-up created). Prefect's database (a private PREFECT_HOME) and the user
cache (FLUXFLOW_CACHE_DIR, the MLflow store template) exist after one warm-up pair, as on a machine that has run
fluxflow-train before; the warm-up's own times, a first run on this machine, are reported on their own row.
Also timed: `--help` of every console script (median of 5).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import MachineLoad, device_label, int_at_least, machine, median, print_table, write_result

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "tiny_test.yaml"
CLIS = ("fluxflow-train", "fluxflow-generate", "fluxflow-compare", "fluxflow-export")
BARE = ("import sys\nfrom fluxflow.config import load_config\nfrom fluxflow.train.pipeline import run_pipeline\n"
        "config = load_config(sys.argv[1]).config\nconfig.output.output_path = sys.argv[2]\nrun_pipeline(config)\n")


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _timed(command: list[str], cwd: Path, env: dict[str, str], log) -> float:
    start = time.perf_counter()
    code = subprocess.run(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {code}; see {getattr(log, 'name', 'its output')}")
    return seconds


def run_arm(arm: str, workdir: Path, cwd: Path, env: dict[str, str], log) -> float:
    out = Path(tempfile.mkdtemp(prefix=f"{arm}-", dir=workdir))
    shutil.rmtree(out)
    if arm == "flow":
        command = [_script("fluxflow-train"), "--config", str(CONFIG), "--output-dir", str(out), "--quiet"]
    else:
        command = [sys.executable, "-c", BARE, str(CONFIG), str(out)]
    return _timed(command, cwd, env, log)


def measure(store: str, pairs: int, workdir: Path, env: dict[str, str], log) -> dict[str, Any]:
    seconds: dict[str, list[float]] = {"flow": [], "bare": []}
    for i in range(pairs):
        for arm in ("flow", "bare") if i % 2 == 0 else ("bare", "flow"):
            cwd = workdir / "existing" if store == "existing" else Path(tempfile.mkdtemp(dir=workdir))
            seconds[arm].append(run_arm(arm, workdir, cwd, env, log))
    added = [f - b for f, b in zip(seconds["flow"], seconds["bare"])]
    return {"seconds": seconds, "median_flow_s": median(seconds["flow"]), "median_bare_s": median(seconds["bare"]),
            "median_added_s": median(added), "median_ratio": median([f / b for f, b in zip(*seconds.values())])}


def help_seconds(env: dict[str, str], repeats: int = 5) -> dict[str, float]:
    found = {}
    for cli in CLIS:
        times = [_timed([_script(cli), "--help"], REPO, env, subprocess.DEVNULL) for _ in range(repeats)]
        found[cli] = median(times)
    return found


def run(args) -> dict[str, Any]:
    load = MachineLoad()
    workdir = Path(tempfile.mkdtemp(prefix="fluxflow-bench-startup-"))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(PREFECT_HOME=str(workdir / "prefect"), FLUXFLOW_CACHE_DIR=str(workdir / "cache"))
    (workdir / "existing").mkdir()
    log = open(workdir / "runs.log", "w")  # noqa: SIM115
    try:
        warmup = {arm: run_arm(arm, workdir, workdir / "existing", env, log) for arm in ("flow", "bare")}
        results = {store: measure(store, args.startup_pairs, workdir, env, log) for store in ("empty", "existing")}
        helps = help_seconds(env)
    except BaseException:
        log.flush()
        print(f"startup: a run failed; its output is in {workdir / 'runs.log'}", flush=True)
        raise
    log.close()
    shutil.rmtree(workdir, ignore_errors=True)
    info = machine(load.stop())
    rows = [[f"MLflow store {store}", r["median_bare_s"], r["median_flow_s"], r["median_added_s"], r["median_ratio"]]
            for store, r in results.items()]
    rows.append(["first run on this machine (new Prefect database, no store template)", warmup["bare"],
                 warmup["flow"], warmup["flow"] - warmup["bare"], warmup["flow"] / warmup["bare"]])
    rows += [[f"`{cli} --help`", None, s, None, None] for cli, s in helps.items()]
    table = print_table(
        f"startup — `fluxflow-train` vs the bare runner, whole processes, configs/tiny_test.yaml, median of "
        f"{args.startup_pairs} alternating pairs, {device_label(info)}",
        ["setting", "bare s", "fluxflow-train s", "added s (median of pairs)", "ratio (median of pairs)"], rows)
    payload = {"benchmark": "startup", "machine": info, "pairs": args.startup_pairs, "warmup_seconds": warmup,
               **results, "help_seconds": helps, "table": table}
    write_result("startup", payload, args.results_dir)
    return payload


def add_arguments(parser) -> None:
    parser.add_argument("--startup-pairs", type=int_at_least(1), default=3,
                        help="startup: alternating (flow, bare) pairs per MLflow store setting, after one warm-up pair")
