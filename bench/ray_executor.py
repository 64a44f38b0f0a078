"""The Ray executor's cost per step, against the local one: the same pipeline of N sequential one-batch VAE steps
(configs/tiny_test.yaml's model, 16 px, batch 4, no samples) through `fluxflow-train`, once per executor, on an
existing cluster (`make ray-cluster`) and the Prefect server the environment names. Figures: docs/PERFORMANCE.md.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m bench.ray_executor --address 127.0.0.1:6379 [--steps 5]

Per step: the time from one step's MLflow run start to the next's (its training, its task's submission and start, its
tracking), and the first step's start after the flow's (where the Ray path also starts a worker process on the node
and imports the task's modules there). The rest of the run (Prefect, MLflow, process start) is the same on both paths.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def config_for(executor: dict, out: Path, n_steps: int) -> dict:
    raw = yaml.safe_load((REPO / "configs" / "tiny_test.yaml").read_text())
    raw["training"]["executor"] = executor
    raw["training"]["pipeline"]["steps"] = [{"name": f"s{i}", "n_epochs": 1, "max_steps": 1, "train_vae": True}
                                            for i in range(n_steps)]
    raw["output"].update(output_path=str(out), no_samples=True)
    raw["tracking"] = {"experiment_name": f"bench-{executor['kind']}"}
    return raw


def run(executor: dict, n_steps: int, directory: Path) -> dict:
    """Wall time of `fluxflow-train` and the step runs' starts and ends from its MLflow store."""
    from mlflow.tracking import MlflowClient

    directory.mkdir(parents=True)
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump(config_for(executor, directory / "out", n_steps)))
    store = f"sqlite:///{directory / 'mlflow.db'}"
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, PYTHONPATH=str(REPO))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli_train", "--config", str(config), "--quiet"], cwd=directory,
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{executor['kind']} run failed:\n{(done.stdout + done.stderr)[-3000:]}")
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(f"bench-{executor['kind']}")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("fluxflow.kind") == "pipeline")
    steps = sorted((r for r in runs if r.data.tags.get("fluxflow.kind") == "step"), key=lambda r: r.info.start_time)
    starts = [r.info.start_time / 1000 for r in steps] + [steps[-1].info.end_time / 1000]
    return {"wall": wall, "first": starts[0] - parent.info.start_time / 1000,
            "per_step": [b - a for a, b in zip(starts, starts[1:])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", required=True, help="the Ray head, host:port")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        local = run({"kind": "local"}, args.steps, Path(tmp) / "local")
        ray = run({"kind": "ray", "address": args.address}, args.steps, Path(tmp) / "ray")
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}")
    print("| executor | fluxflow-train wall s | flow start → first step's run s | per step s (median; each) |")
    print("|---|---|---|---|")
    for name, r in (("local", local), ("ray", ray)):
        each = ", ".join(f"{s:.2f}" for s in r["per_step"])
        print(f"| {name} | {r['wall']:.1f} | {r['first']:.1f} | {statistics.median(r['per_step']):.2f} ({each}) |")
    extra = statistics.median(ray["per_step"]) - statistics.median(local["per_step"])
    print(f"Ray executor overhead per step (median): {extra:+.2f} s; first step {ray['first'] - local['first']:+.1f} s")


if __name__ == "__main__":
    main()
