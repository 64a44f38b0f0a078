"""`python -m bench.run [name ...] [options]` — run all benchmarks (the default) or the named ones.

    python -m bench.run                      # all six, CPU-sized
    python -m bench.run overhead --pairs 5
    python -m bench.run throughput --sizes 64 --batch-sizes 8 16 32 64 --kinds flow
    python -m bench.run resume checkpoint
    python -m bench.run cache --cache-sizes 32
    python -m bench.run startup --startup-pairs 3

Each prints one markdown table and writes `bench/results/<name>.json` (machine, date, raw timings, the table).
"""
from __future__ import annotations

# Quiet and offline before anything imports prefect or mlflow (the overhead benchmark does).
import flows.env  # noqa: F401

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from bench import cache, checkpoint, overhead, resume, startup, throughput  # noqa: E402
from bench.common import RESULTS_DIR, int_at_least, results_dir_problem  # noqa: E402

BENCHMARKS = {"overhead": overhead, "throughput": throughput, "cache": cache, "resume": resume,
              "checkpoint": checkpoint, "startup": startup}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="name",
                   help=f"benchmarks to run: {', '.join(BENCHMARKS)} (default: all)")
    p.add_argument("--results-dir", type=Path, default=RESULTS_DIR, help="where the JSON results go")
    p.add_argument("--threads", type=int_at_least(1), default=None,
                   help="torch intra-op threads, here and in child processes (default: torch's, one per core)")
    for module in BENCHMARKS.values():
        module.add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    names = args.names or list(BENCHMARKS)
    problem = results_dir_problem(args.results_dir)
    if problem:
        p.error(f"--results-dir: {problem}")
    for name in names:  # what a benchmark's options allow only together, said before any benchmark measures
        problem = getattr(BENCHMARKS[name], "arguments_problem", lambda args: None)(args)
        if problem:
            p.error(problem)
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the resume benchmark's child processes
    start = time.perf_counter()
    for name in names:
        t = time.perf_counter()
        BENCHMARKS[name].run(args)
        print(f"({name}: {time.perf_counter() - t:.0f} s)\n", flush=True)
    print(f"bench: {', '.join(names)} in {time.perf_counter() - start:.0f} s; results in {args.results_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
