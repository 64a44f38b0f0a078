"""overhead: the same tiny 2-step pipeline through the Prefect + MLflow flow and through the bare runner.

Both arms run in this one process, alternating (flow, bare), (bare, flow), ... so that drift (a warming disk cache,
another process on the machine) hits both alike; each run gets a fresh output directory, so nothing is skipped as
already complete. One warm-up run of each arm comes first and is not counted in the ratio: the first flow call
starts Prefect's embedded API server (12-15 s with a fresh database) and creates the MLflow SQLite store, costs a
long-lived deployment does not pay per run; its wall time is reported on a row of its own. Reported: median wall
time of each arm and the median of the per-pair ratios flow / bare.

Isolation: unless PREFECT_API_URL or PREFECT_HOME is set, Prefect's database lives in a temporary PREFECT_HOME, and
MLflow writes to a temporary SQLite store with its artifacts under the temporary directory (the runs execute with
that directory as the working directory), so the benchmark neither reads nor grows the user's `~/.prefect`,
`./mlflow.db` or `./mlruns`.

What the flow arm adds: the flow and task runs in Prefect's database, the MLflow parent and nested runs with params,
batched metrics and the sample images as artifacts, and the Prefect table/progress artifacts.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from bench.common import (MachineLoad, Stopwatch, device_label, int_at_least, machine, median, print_table,
                          tiny_pipeline, write_result)

Runner = Callable[[Path, int], None]  # (fresh output directory, batches per step)


def flow_runner(path: Path, batches: int) -> None:
    """Run the tiny pipeline through `flows.cli_flow_run.run_pipeline_flow` (Prefect + MLflow)."""
    from flows.cli_flow_run import run_pipeline_flow

    from fluxflow.config.run_config import resolve_run_config

    config = resolve_run_config(tiny_pipeline(path, batches=batches, samples=True), output_dir=str(path), device="cpu")
    code = run_pipeline_flow(config.config)
    if code != 0:
        raise RuntimeError(f"the flow run in {path} exited with code {code}")


def bare_runner(path: Path, batches: int) -> None:
    """Run the tiny pipeline through `fluxflow.train.pipeline.run_pipeline` (console + JSONL tracking only)."""
    from fluxflow.config.run_config import resolve_run_config
    from fluxflow.train.pipeline import run_pipeline

    run_pipeline(resolve_run_config(tiny_pipeline(path, batches=batches, samples=True), device="cpu").config)


def measure_pairs(runners: dict[str, Runner], pairs: int, batches: int, workdir: Path, log) -> dict[str, Any]:
    """Warm-up once per arm, then `pairs` alternating pairs; returns the per-run seconds and the summary."""
    names = ("flow", "bare")
    warmup: dict[str, float] = {}
    for name in names:
        with _quiet(log), Stopwatch() as sw:
            runners[name](workdir / f"warmup-{name}", batches)
        warmup[name] = sw.seconds
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for i in range(pairs):
        order = names if i % 2 == 0 else names[::-1]
        for name in order:
            with _quiet(log), Stopwatch() as sw:
                runners[name](workdir / f"{name}-{i}", batches)
            seconds[name].append(sw.seconds)
    ratios = [f / b for f, b in zip(seconds["flow"], seconds["bare"])]
    return {"warmup_seconds": warmup, "seconds": seconds, "ratios": ratios, "median_flow_s": median(seconds["flow"]),
            "median_bare_s": median(seconds["bare"]), "median_ratio": median(ratios),
            "median_added_s": median([f - b for f, b in zip(seconds["flow"], seconds["bare"])])}


@contextlib.contextmanager
def _quiet(log):
    """Training prints go to the log file, not into the benchmark's table."""
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def run(args) -> dict[str, Any]:
    load = MachineLoad()
    workdir = Path(tempfile.mkdtemp(prefix="fluxflow-bench-overhead-"))
    # A private MLflow store, so the benchmark neither reads nor grows the user's ./mlflow.db ...
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    runners = getattr(args, "runners", None) or {"flow": flow_runner, "bare": bare_runner}
    # ... and a private Prefect database (read when prefect is first imported: the flow arm imports it lazily).
    if (runners["flow"] is flow_runner and not {"PREFECT_API_URL", "PREFECT_HOME"} & set(os.environ)
            and "prefect" not in sys.modules):
        os.environ["PREFECT_HOME"] = str(workdir / "prefect")
    # Prefect's console log handler keeps the stream it was created with (the log file, while output is
    # redirected) and writes to it again at interpreter exit, when the embedded API server stops: leave it open.
    log = open(workdir / "runs.log", "w")  # noqa: SIM115
    cwd = os.getcwd()
    os.chdir(workdir)  # MLflow puts new experiments' artifacts in ./mlruns
    try:
        result = measure_pairs(runners, args.pairs, args.batches, workdir, log)
    except BaseException:
        log.flush()
        print(f"overhead: a run failed; its output is in {workdir / 'runs.log'}", flush=True)
        raise
    finally:
        os.chdir(cwd)
        if user_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = user_uri
    log.flush()
    shutil.rmtree(workdir, ignore_errors=True)
    info = machine(load.stop())
    rows = [["bare `run_pipeline`", result["median_bare_s"], 1.0, None],
            ["Prefect + MLflow flow", result["median_flow_s"], result["median_ratio"], result["median_added_s"]],
            ["first flow call of the process (warm-up, not in the ratio)", result["warmup_seconds"]["flow"], None,
             result["warmup_seconds"]["flow"] - result["warmup_seconds"]["bare"]]]
    table = print_table(
        f"overhead — tiny 2-step pipeline ({args.batches} batches per step), median of {args.pairs} alternating "
        f"pairs, {device_label(info)}",
        ["path", "wall s (median)", "ratio to bare (median of pairs)", "added s (median of pairs)"], rows)
    payload = {"benchmark": "overhead", "machine": info, "pairs": args.pairs, "batches_per_step": args.batches,
               **result, "table": table}
    write_result("overhead", payload, args.results_dir)
    return payload


def add_arguments(parser) -> None:
    parser.add_argument("--pairs", type=int_at_least(1), default=3,
                        help="alternating (flow, bare) pairs after warm-up (default 3; the table gives their median)")
    parser.add_argument("--batches", type=int_at_least(1), default=2, help="batches per step of the tiny pipeline")
