"""A real Ray cluster of two nodes on this machine for the tests that need one: started and stopped by the test.

Each node is its own raylet with one CPU and a small object store, under a temporary directory of this test's
(RAY_TMPDIR too, so that Ray's "current cluster" file, which `ray.init(address="auto")` reads, is not the machine's
shared one). Everything binds 127.0.0.1: Ray's single-machine mode (tests/ray_cluster.py's LOOPBACK, set for the
nodes' processes; for this driver, ray_constants.ENABLE_RAY_CLUSTER while the cluster lives) makes the nodes, the
workers and this driver use the loopback address instead of the machine's (torch's own rendezvous store, which
torchrun and Ray Train's process group start, listens on all interfaces whatever Ray does); the dashboard's ports are
free ones, not Ray's fixed defaults, which another cluster on this machine may hold. `ray.shutdown()` and
`Cluster.shutdown()` stop exactly the processes this cluster started.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

from ray_cluster import LOOPBACK, REPO, free_port

NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20, "node_ip_address": "127.0.0.1"}


@contextlib.contextmanager
def local_ray_cluster(nodes: int = 2, env: dict[str, str] | None = None, head_cpus: int = 1):
    """Yields the `ray.cluster_utils.Cluster`, with this process connected to it as a driver. `env` is the
    environment of the cluster's processes (and so of every Ray worker) on top of this one's; `head_cpus` 0 keeps
    training workers off the head (whose loss would end the cluster), so that a test can remove the others."""
    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="ffray", dir="/tmp")  # short: Ray's socket paths must stay under ~107 characters
    os.makedirs(os.path.join(tmp, "ray"))
    saved, saved_mode = dict(os.environ), ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False  # in case Ray was imported before this module set the variable
    gcs_port = free_port()
    # RAY_ADDRESS: Ray's own processes that look for "the" cluster (Ray Train's placement-group cleaner) find this
    # one, not another one of this machine's.
    # PYTHONPATH: the nodes' workers import this checkout, as the test does (tests/ray_cluster.py's nodes too), not
    # whatever checkout the environment's editable install points at (a git worktree's shared venv: another one).
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    os.environ.update({"RAY_TMPDIR": tmp, "RAY_ADDRESS": f"127.0.0.1:{gcs_port}", "PYTHONPATH": pythonpath,
                       **LOOPBACK, **(env or {})})
    cluster = Cluster()
    try:
        try:
            args = {**NODE, "temp_dir": os.path.join(tmp, "ray")}
            cluster.add_node(**{**args, "num_cpus": head_cpus}, include_dashboard=False, gcs_server_port=gcs_port,
                             dashboard_port=free_port(), dashboard_agent_listen_port=free_port())  # the head
            for _ in range(nodes - 1):
                cluster.add_node(**args)
            cluster.wait_for_nodes()
        finally:
            os.environ.clear()
            os.environ.update(saved)  # the nodes keep the environment they started with; this process its own
        ray.init(address=f"127.0.0.1:{gcs_port}", log_to_driver=True)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = saved_mode
        shutil.rmtree(tmp, ignore_errors=True)
