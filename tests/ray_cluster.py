"""A real Ray cluster of two nodes on this machine for the tests that need one: started and stopped by the test.

Each node is its own raylet with one CPU and a small object store, bound to 127.0.0.1, under a temporary directory of
this test's (RAY_TMPDIR too, so that Ray's "current cluster" file, which `ray.init(address="auto")` reads, is not the
machine's shared one). `ray.shutdown()` and `Cluster.shutdown()` stop exactly the processes this cluster started.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile

NODE = {"num_cpus": 1, "object_store_memory": 100 * 2**20, "node_ip_address": "127.0.0.1"}


@contextlib.contextmanager
def local_ray_cluster(nodes: int = 2, env: dict[str, str] | None = None):
    """Yields the `ray.cluster_utils.Cluster`, with this process connected to it as a driver. `env` is the
    environment of the cluster's processes (and so of every Ray worker) on top of this one's."""
    import ray
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="ffray", dir="/tmp")  # short: Ray's socket paths must stay under ~107 characters
    os.makedirs(os.path.join(tmp, "ray"))
    saved = dict(os.environ)
    os.environ.update({"RAY_TMPDIR": tmp, **(env or {})})
    os.environ.pop("RAY_ADDRESS", None)  # never another cluster of this machine
    cluster = Cluster()
    try:
        try:
            args = {**NODE, "temp_dir": os.path.join(tmp, "ray")}
            cluster.add_node(**args, include_dashboard=False)  # the head
            for _ in range(nodes - 1):
                cluster.add_node(**args)
            cluster.wait_for_nodes()
        finally:
            os.environ.clear()
            os.environ.update(saved)  # the nodes keep the environment they started with; this process its own
        ray.init(address=cluster.address, log_to_driver=True)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
