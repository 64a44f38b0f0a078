"""Pipeline steps on a Ray cluster (`training.executor.kind: ray`, fluxflow/config/executor.py).

The flow submits each step task through prefect-ray's `RayTaskRunner` inside `remote_options(...)` holding the step's
resources, so Ray places it on a node that has them and holds them for it: Ray's accounting replaces the host-local
GPU claim and the `gpu` tag limit of the local path. Before a step is submitted its request is compared with the
live nodes: a request no node can meet would pend forever in Ray, so it fails the step at once instead, with one line
naming the request and what the nodes offer.

Ray is imported only inside these functions: a local run never loads it (tests/flows/test_ray_executor.py checks).
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import socket
import sys

from flows import gpu_slot
from fluxflow.errors import NonRetryable
from fluxflow.storage.location import remote_uri
from fluxflow.wording import counted

NAMESPACE = "fluxflow"
PROBE_TIMEOUT_S = 5.0  # ray.init on an address nobody listens at retries for minutes; a TCP probe answers first
STORE_CHECK_TIMEOUT_S = 120.0  # a node's first task starts a worker (imports Ray, fsspec, boto: seconds when busy)
# Resources Ray adds by itself (node:<ip>, the head marker, object store): not what a step can ask for.
_INTERNAL = ("node:", "object_store_memory")
ADDRESS_SETTING = "training.executor.address, else RAY_ADDRESS, else auto"  # where the address came from


class ClusterUnreachable(NonRetryable):
    """No Ray cluster answers at the configured address (the one line to print; exit 2)."""


class Infeasible(NonRetryable):
    """A step asks for more than any node of the cluster offers."""


class StoreUnreachable(NonRetryable):
    """A node of the cluster cannot use the output's object store (the one line to print; exit 2)."""


def probe(address: str) -> str:
    """The `host:port` behind `address` once something listens there; ClusterUnreachable otherwise."""
    from ray._private.services import canonicalize_bootstrap_address_or_die  # resolves `auto` as ray.init does

    where = address.removeprefix("ray://")
    host, colon, port = where.rpartition(":")
    if where != "auto" and not (colon and host and port.isdigit() and "://" not in host):
        raise ClusterUnreachable(f"{address} is not a Ray cluster's address ({ADDRESS_SETTING}): expected the head's "
                                 "host:port, ray://host:port (Ray Client) or auto" + (
                                     "; an http:// address is the dashboard's (Ray Jobs)"
                                     if where.startswith(("http://", "https://")) else "")) from None
    if where != "auto" and not 1 <= int(port) <= 65535:  # the socket would connect to port % 65536 (99999: 34463)
        raise ClusterUnreachable(f"{address} is not a Ray cluster's address ({ADDRESS_SETTING}): its port {port} is "
                                 "out of range (1-65535)") from None
    try:
        where = canonicalize_bootstrap_address_or_die(where) if where == "auto" else where
        host, _, port = where.rpartition(":")
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S) as connection:
            # A cluster with TLS (Ray's RAY_USE_TLS) answers a handshake, not a cleartext greeting: only reachable.
            tls = os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")
            answer = None if tls else http2_greeting(connection)
    except (OSError, ValueError) as exc:  # ConnectionError (no cluster for `auto`) is an OSError
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if address == "auto":  # Ray's words name its own `--address` flag, which fluxflow-train has not
            reason = "no cluster was started on this machine (`ray start --head`, or `make ray-cluster`)"
        raise ClusterUnreachable(f"no Ray cluster answers at {address} ({ADDRESS_SETTING}): {reason}") from None
    if answer is not None:
        raise ClusterUnreachable(f"{address} is not a Ray cluster's address ({ADDRESS_SETTING}): what listens there "
                                 f"answered {answer!r}, not gRPC; give the head's GCS port (`ray start --head --port`, "
                                 "6379 by default), not the dashboard's") from None
    return where


def http2_greeting(connection: socket.socket) -> str | None:
    """None when the server behind `connection` speaks HTTP/2, as Ray's GCS and Ray Client (gRPC) do; else the start
    of what it answered. ray.init retries a GCS for minutes, whatever listens at the port (the dashboard's HTTP, say):
    an HTTP/2 server answers the client's connection preface with a SETTINGS frame (RFC 9113, 3.4) at once."""
    connection.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # + empty SETTINGS
    head = b""
    with contextlib.suppress(OSError):  # closed or silent: what came so far is the answer
        while len(head) < 9 and (chunk := connection.recv(64)):
            head += chunk
    if len(head) >= 9 and head[3] == 4:  # a frame header: 3 bytes length, then the type, 4 = SETTINGS
        return None
    return head.decode("latin-1").split("\r")[0].strip() or "nothing"


def step_request(step, nproc: int, on_cuda: bool, across_nodes: bool = False) -> dict[str, float]:
    """The Ray resources a step asks for: its `resources:`, with GPUs defaulting to its processes on CUDA (0 on
    CPU) and CPUs to 1. A step across nodes (`across_nodes`: Ray Train, fluxflow/runtime/ray_train_launch.py) only
    waits for its Train workers, which hold their own CPUs and GPUs: its task asks for none by default. Zero amounts
    are left out."""
    asked = step.resources
    request = {"CPU": (0.0 if across_nodes else 1.0) if asked.cpus is None else asked.cpus,
               "GPU": float(nproc if on_cuda and not across_nodes else 0) if asked.gpus is None else asked.gpus,
               "memory": float(asked.memory or 0), **asked.custom}
    return {name: amount for name, amount in request.items() if amount}


def describe(resources: dict[str, float]) -> str:
    """`2 GPU, 1 CPU, 4.0 GB memory, node_a: 1` (Ray's own resources first, internal ones left out)."""
    parts = [f"{resources[k]:g} {k}" for k in ("GPU", "CPU") if k in resources]
    if "memory" in resources:
        parts.append(f"{resources['memory'] / 1e9:.1f} GB memory")
    parts += [f"{k}: {v:g}" for k, v in sorted(resources.items())
              if k not in ("GPU", "CPU", "memory") and not k.startswith(_INTERNAL)]
    return ", ".join(parts) or "nothing"


def infeasible(step_name: str, request: dict[str, float], nodes: list[dict]) -> str | None:
    """None when some node has every resource of `request` (in total, busy or not: a busy node frees them later);
    else the line saying what was asked and what the cluster offers."""
    offers = [node.get("Resources", {}) for node in nodes]
    if any(all(offer.get(k, 0) >= v for k, v in request.items()) for offer in offers):
        return None
    unknown = sorted(k for k in request if not any(k in offer for offer in offers))
    too_much = {k: v for k, v in request.items() if k not in unknown and not any(o.get(k, 0) >= v for o in offers)}
    why = (f"no node offers {', '.join(unknown)}" if unknown else f"no node has {describe(too_much)}" if too_much
           else "no single node has all of it")
    listed = "; ".join(f"node {node['NodeID'][:12]}: {describe(node.get('Resources', {}))}" for node in nodes)
    return (f"step {step_name} asks Ray for {describe(request)}: {why} (the cluster's {counted(len(nodes), 'node')}: "
            f"{listed or 'none'}). Change its resources, or add such a node.")


def plain_worker_lines(stream=None) -> None:
    """The step tasks' lines, which Ray prints in this driver behind `(pipeline-step pid=...)`, without colour codes
    when its stdout is not a terminal: a log file or the Prefect worker's capture got `^[[36m` on every line. A
    RAY_COLOR_PREFIX the user set is kept."""
    if not (stream or sys.stdout).isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")


def alive_nodes() -> list[dict]:
    """The cluster's live nodes, as `ray.nodes()` describes them (this driver has joined it)."""
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


class RaySteps:
    """The flow's step submitter on a Ray cluster: `with RaySteps(config) as steps: steps.submit(...)`."""

    def __init__(self, config):
        self.config, self.address = config, config.training.executor.ray_address()
        self.device = config.training.device
        self.nodes: list[dict] = []
        self.submitted: list = []
        self._runner = None

    def join(self) -> None:
        """Join the cluster as a driver (once; ClusterUnreachable when nothing answers there) and list the live
        nodes."""
        import ray

        if not ray.is_initialized():
            plain_worker_lines()
            probe(self.address)
            try:
                ray.init(address=self.address, namespace=NAMESPACE, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ClusterUnreachable(f"cannot join the Ray cluster at {self.address}: "
                                         f"{' '.join(str(exc).split())}") from None
        self.nodes = alive_nodes()

    def __enter__(self) -> RaySteps:
        from prefect_ray import RayTaskRunner

        self.join()  # before the runner: it would start a local Ray for `auto` instead of failing
        # A deployment's run has no fluxflow-train preflight before it: without this, a step no node can run was
        # refused only when submitted, after its parent had trained (hours into a nightly run).
        self.check_steps()
        self._runner = RayTaskRunner(init_kwargs={"address": self.address, "namespace": NAMESPACE}).__enter__()
        from flows.mlflow_runs import resolve_tracking_uri

        warm_up(self.nodes, resolve_tracking_uri(self.config.tracking.tracking_uri))
        return self

    def __exit__(self, *exc_info) -> None:
        import ray

        self._runner.__exit__(*exc_info)
        ray.shutdown()  # this driver only; the cluster stays

    def check_steps(self) -> None:
        """Every step of the config fits one of the joined nodes (Infeasible) and every node reaches an object-store
        output (StoreUnreachable): fluxflow-train's preflight and the flow's start, before any step is submitted."""
        for step in self.config.resolved_steps():
            self.request_for(step)
        check_store_on_nodes(self.config.output.output_path, self.nodes)

    def on_cuda(self) -> bool:
        """`cuda`, or `auto` on a cluster with a GPU somewhere."""
        if self.device == "auto":
            return any(node.get("Resources", {}).get("GPU", 0) > 0 for node in self.nodes)
        return self.device == "cuda"

    def request_for(self, step) -> dict[str, float]:
        """The step's Ray resources; Infeasible when no node of the cluster has them."""
        dist = self.config.training.distributed
        request = step_request(step, dist.nproc_per_node, self.on_cuda(), across_nodes=dist.uses_ray_train)
        problem = infeasible(step.name, request, self.nodes)
        if not problem and dist.uses_ray_train:  # its Train workers, one CPU (GPU) each, anywhere in the cluster
            from fluxflow.runtime.ray_train_launch import capacity_problem

            in_all = collections.Counter()
            for node in self.nodes:
                in_all.update(node.get("Resources", {}))
            problem = capacity_problem(in_all, dist.processes, self.on_cuda(), step.name)
        if problem:
            raise Infeasible(problem)
        return request

    def submit(self, task, step, parameters: dict):
        """The step's task, placed by Ray on a node with its resources; Infeasible when no node has them."""
        from prefect_ray.context import remote_options

        # The nodes as they are now: one that died since the run joined (a lost host hours into a run) was still
        # counted, and a step only it could run waited for it, with no word, for ever.
        self.nodes = alive_nodes()
        request = self.request_for(step)
        custom = {k: v for k, v in request.items() if k not in ("CPU", "GPU", "memory")}
        with remote_options(num_cpus=request.get("CPU", 0), num_gpus=request.get("GPU", 0),  # `ray.remote`'s keywords
                            **({"memory": int(request["memory"])} if "memory" in request else {}),
                            **({"resources": custom} if custom else {})):
            future = self._runner.submit(task, parameters)
        self.submitted.append(future)
        return future

    def started(self, future) -> bool:
        """Every step Ray was given counts as started: where it is, the flow cannot see, and Ray cancels it."""
        return True

    def stop(self) -> None:
        """Interrupted: KeyboardInterrupt in every running step task (it ends its MLflow run KILLED; the next run
        resumes it from its latest.pt)."""
        import ray

        for future in self.submitted:
            ray.cancel(future.wrapped_future)


def preflight(config) -> None:
    """Before a run starts (fluxflow-train; a flow run checks the same in RaySteps.__enter__): the cluster answers,
    every step fits one of its nodes, and every node reaches an object-store output; raises ClusterUnreachable,
    Infeasible or StoreUnreachable with the line to print. The connection stays for the flow's RaySteps."""
    steps = RaySteps(config)
    steps.join()
    steps.check_steps()


_STORES_REACHED: set[tuple[str, frozenset]] = set()  # (uri, node ids) checked by this process: once per run


def check_store_on_nodes(output_path, nodes: list[dict]) -> None:
    """StoreUnreachable when the output is on an object store that a node cannot use (`store_problem_on_nodes`);
    asked once per process for the same nodes (fluxflow-train's preflight, then its flow's RaySteps)."""
    uri = remote_uri(output_path)
    seen = (uri, frozenset(node["NodeID"] for node in nodes))
    if uri is None or seen in _STORES_REACHED:
        return
    problem = store_problem_on_nodes(uri, nodes)
    if problem:
        raise StoreUnreachable(problem)
    _STORES_REACHED.add(seen)


def store_problem_on_nodes(uri: str, nodes: list[dict]) -> str | None:
    """The line saying which node cannot reach the object store `uri`, and why; None when all can. A step task reads
    and writes the store with the credentials and endpoint (AWS_*) of its node's environment, which is that of the
    node's `ray start`, not the driver's: a node without them failed the step only once it ran (no credentials,
    exit 2), or after Prefect's retry (no AWS_ENDPOINT_URL: the connection to AWS itself failed, exit 1)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(store_problem)
    asked = {node["NodeID"]: task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"],
                                                                                          soft=False)).remote(uri)
             for node in nodes}
    for node_id, answer in asked.items():
        try:
            problem = ray.get(answer, timeout=STORE_CHECK_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(answer, force=True)
            problem = f"no answer within {STORE_CHECK_TIMEOUT_S:g} s from a look at {uri}"
        if problem:
            return (f"Ray node {node_id[:12]} cannot use the output {uri}: {problem} (a node's environment is that "
                    "of its `ray start`: give every node the store's credentials and endpoint, e.g. AWS_*)")
    return None


def store_problem(uri: str) -> str | None:
    """On a node: None when the store answers a look at the output's lock object (there or not); else why not, in one
    line (fluxflow/storage/store_errors.py)."""
    import fsspec

    from fluxflow.storage.store_errors import describe_store_error
    from fluxflow.storage.store_lock import LOCK_NAME

    try:
        fs, base = fsspec.core.url_to_fs(uri, use_listings_cache=False)
        fs.info(f"{base}/{LOCK_NAME}")
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - what the store said, as the step would have met it
        line = describe_store_error(uri, exc)
        return line.removeprefix(f"{uri}: ") if line else f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


class LocalSteps:
    """The flow's step submitter of the local path: the flow's own task runner (threads in this process)."""

    def submit(self, task, step, parameters: dict):
        return task.submit(**parameters)

    def started(self, future) -> bool:
        """Whether the step's task has its `gpu` slot and trains (not still waiting for it: flows/gpu_slot.py)."""
        return gpu_slot.started(future.task_run_id)

    def stop(self) -> None:
        pass  # the task threads see the stop request (fluxflow/runtime/stop_request.py), a wait for the slot too


def step_submitter(config):
    """RaySteps, or LocalSteps (nothing to join or leave), as `training.executor.kind` says."""
    return RaySteps(config) if config.training.executor.kind == "ray" else contextlib.nullcontext(LocalSteps())


def warm_up(nodes: list[dict], tracking_uri: str) -> None:
    """On every node, a task that takes no resources and does what a fresh process pays for at a step's start (the
    imports of Prefect, MLflow, torch and the training core, and the tracking store's opening), started now and not
    waited for. Ray reuses that worker process for this driver's step tasks on the node, so a branch's first step
    there does not pay it (20-30 s on a busy 2-core machine) while it holds the node's resources and its sibling
    trains on a node that trained the parent step."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(prepare_for_steps)
    for node in nodes:
        task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=True)).remote(tracking_uri)


def prepare_for_steps(tracking_uri: str) -> None:
    import flows.step_task  # noqa: F401  (Prefect, MLflow)
    import fluxflow.train.step_run  # noqa: F401  (torch, the models)
    # Imported by a step only when first needed; measured in a fresh process on 2 cores: torch._dynamo by the first
    # optimizer (1.3 s, before the step's MLflow run opens).
    import torch._dynamo  # noqa: F401
    from mlflow.tracking import MlflowClient

    # A local sqlite store's first opening in a process takes 0.8 s; MLflow keeps it open for the process. Only a head
    # start: the step itself reports a store it cannot use.
    with contextlib.suppress(Exception):
        MlflowClient(tracking_uri).search_experiments(max_results=1)
