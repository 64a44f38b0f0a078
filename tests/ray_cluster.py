"""A real two-node Ray cluster on this machine for the tests of the Ray executor: a head with the custom resource
`node_a` and a worker node with `node_b`, one CPU each, small object stores, every port chosen free, temp dirs under
the test's. Each `ray start` runs in a session of its own and leaves its processes (GCS, raylet, agents, workers) in
that session; the cluster is stopped by signalling the processes of those two sessions, never by `ray stop`, which
would stop every Ray on the machine. Its processes listen on 127.0.0.1 only (LOOPBACK; `listening_addresses` checks)."""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from process_groups import alive

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
STOP_GRACE_S = 3.0


# Ray's single-machine mode: every node, worker and driver takes 127.0.0.1 as its address, and so listens there only
# (with the machine's address, as `--node-ip-address=127.0.0.1` gives it, GCS, raylets and agents listen on all
# interfaces).
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    """What the nodes (and so the step tasks they run) inherit: this checkout importable, quiet, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    # Token authentication off explicitly: Ray turns it on for a head when ~/.ray/auth_token exists (any local
    # ray.init() on the machine writes one), and a node started with `ray start --address` then cannot join.
    return dict(env, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1", RAY_AUTH_MODE="disabled",
                **LOOPBACK, **extra)


@dataclass
class TwoNodeCluster:
    address: str  # host:port of the head's GCS
    sessions: list[int]  # the two `ray start`s' sessions (their pids), which hold every process of the nodes


# A worker node's `ray start` in single-machine mode: Ray's CLI refuses to add a node there, so this process of the
# CLI runs with the multi-node switch on, keeping the loopback address that mode gives (the switch would replace it
# with the machine's); the node it starts (raylet, agents, workers) inherits the mode from LOOPBACK.
JOIN = ("from ray._private import ray_constants, services; ray_constants.ENABLE_RAY_CLUSTER = True; "
        "services.resolve_ip_for_localhost = lambda host: host; "
        "services.get_node_ip_address = lambda address=None: '127.0.0.1'; "
        "from ray.scripts.scripts import main; main()")


def _start(args: list[str], temp_dir: Path, resources: dict, log: Path, env: dict[str, str]) -> int:
    ports = [f"--dashboard-agent-listen-port={free_port()}", f"--metrics-export-port={free_port()}"]
    ray = [RAY] if "--head" in args else [sys.executable, "-c", JOIN]
    command = [*ray, "start", *args, "--num-cpus=1", "--num-gpus=0", f"--resources={json.dumps(resources)}",
               "--object-store-memory=100000000", f"--temp-dir={temp_dir}", "--disable-usage-stats", *ports]
    with open(log, "w") as sink:
        child = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    assert child.wait(timeout=120) == 0, log.read_text()[-3000:]
    return child.pid


@contextlib.contextmanager
def two_node_cluster(directory: Path, **env: str):
    """Yields a TwoNodeCluster once both nodes are alive; stops every process of both nodes on the way out. `env`:
    more environment of the nodes' processes. The logs go to `directory`; the nodes' temp dirs to a short folder of
    the session's TMPDIR (tests/conftest.py): Ray's socket paths must stay under 108 bytes, which a pytest folder of
    a parallel worker (.../pytest-N/popen-gw0/ray0/head/session_.../sockets/plasma_store) exceeds."""
    temp = Path(tempfile.mkdtemp(prefix="ray"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    sessions: list[int] = []
    try:
        sessions.append(_start(["--head", f"--port={port}", "--include-dashboard=false",
                              f"--ray-client-server-port={free_port()}"],
                             temp / "head", {"node_a": 1}, directory / "head.log", ray_env(**env)))
        sessions.append(_start([f"--address={address}"], temp / "worker", {"node_b": 1},
                             directory / "worker.log", ray_env(**env)))
        yield TwoNodeCluster(address, sessions)
    finally:
        stop(sessions)
        shutil.rmtree(temp, ignore_errors=True)


def session_members(sessions: list[int]) -> list[int]:
    """Pids of the processes in these sessions: Ray's workers put themselves in process groups of their own, but
    stay in the session of the `ray start` that started their node."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[3]) in sessions:
                        found.append(int(entry))
    return found


def stop(sessions: list[int]) -> None:
    """TERM to every process of the nodes' sessions, KILL to what is left after the grace (gcs_server and raylet may
    ignore TERM)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in session_members(sessions):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_GRACE_S
        while sig == signal.SIGTERM and any(map(alive, session_members(sessions))) and time.monotonic() < deadline:
            time.sleep(0.2)


def listening_addresses(pids: list[int]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket that the processes `pids` listen on, read from /proc."""
    inodes = set()
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith("socket:["):
                        inodes.add(target[8:-1])
    found = set()
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        with open(table) as f:
            for row in f.readlines()[1:]:
                fields = row.split()
                if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                    host, port = fields[1].split(":")
                    raw = bytes.fromhex(host)  # 32-bit words in host (little-endian) order
                    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                    found.add((socket.inet_ntop(family, raw), int(port, 16)))
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)
