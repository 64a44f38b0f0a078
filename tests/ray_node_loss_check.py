"""Manual check (not collected by pytest, ~2 minutes on 2 cores): a whole Ray node lost mid-step.

    PYTHONPATH=. python tests/ray_node_loss_check.py

A local cluster of a head without CPUs (so that no training worker runs there: losing the head ends the cluster) and
three one-CPU nodes; the 100-batch GAN step of tests/runtime/test_ray_train_step.py with `nodes: 2` takes two of them.
Once its `latest.pt` exists, one node holding a worker is removed with every process on it (raylet and workers,
SIGKILL). Ray Train restarts the group on the two nodes left, the step resumes from `latest.pt`, and its weights must
equal, bit for bit, those of the same step under torchrun with 2 processes, uninterrupted (trained meanwhile in a
thread). Prints the node removed, where the step resumed, and `BITWISE True`; exits 1 otherwise. Kept out of
`make test`: the test suite's Ray budget goes to the two tests of tests/runtime/test_ray_train_step.py.
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import yaml

TESTS = Path(__file__).resolve().parent
sys.path[:0] = [str(TESTS), str(TESTS / "runtime")]  # ray_driver_cluster; tests/runtime/test_ray_train_step.py

from ray_driver_cluster import local_ray_cluster  # noqa: E402
from test_ray_train_step import CONFIG, RAY, TORCHRUN  # noqa: E402


def config_for(out: Path, distributed: str):
    from fluxflow.config import load_config

    text = CONFIG.replace("OUT", str(out)).replace("DISTRIBUTED", distributed)
    text = text.replace("size: 32", "size: 404").replace("max_steps: 4", "max_steps: 100")
    return load_config(yaml.safe_load(text)).config


def in_thread(fn, *args) -> tuple[threading.Thread, dict]:
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, box


def main() -> int:
    from fluxflow.runtime.launch import run_step_on_processes

    tmp = Path(tempfile.mkdtemp(prefix="ffnode"))
    reference, ref_box = in_thread(run_step_on_processes, config_for(tmp / "torchrun", TORCHRUN), "vae_gan", None)
    with local_ray_cluster(nodes=4, head_cpus=0) as cluster:
        from ray._private.state import available_resources_per_node

        step, box = in_thread(run_step_on_processes, config_for(tmp / "ray", RAY), "vae_gan", None)
        latest = tmp / "ray" / "checkpoints" / "vae_gan" / "latest.pt"
        while not latest.exists() and step.is_alive():
            time.sleep(0.05)
        victim = None
        while victim is None and step.is_alive():  # a node whose one CPU a Ray Train worker holds
            free = available_resources_per_node()
            victim = next((n for n in cluster.worker_nodes if n.node_id in free and free[n.node_id].get("CPU", 0) < 1),
                          None)
        if victim is None:
            print("the step ended before a node could be removed", box)
            return 1
        print(f"removing node {victim.node_id} at {time.strftime('%H:%M:%S')}", flush=True)
        cluster.remove_node(victim, allow_graceful=False)
        step.join()
    reference.join()
    if "error" in box or "error" in ref_box:
        print("failed:", box.get("error"), ref_box.get("error"))
        return 1
    ray_run, torchrun = box["value"], ref_box["value"]
    print("resumed_from", ray_run.result.resumed_from, "global_step", ray_run.ref.global_step)
    a = torch.load(torchrun.ref.uri, weights_only=True)["models"]
    b = torch.load(ray_run.ref.uri, weights_only=True)["models"]
    same = all(torch.equal(a[m][k], b[m][k]) for m in a for k in a[m])
    print("BITWISE", same)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if same and ray_run.result.resumed_from is not None else 1


if __name__ == "__main__":
    sys.exit(main())
