"""The Ray executor (`training.executor.kind: ray`, flows/ray_steps.py) against a real two-node Ray cluster started on
this machine by the module (tests/ray_cluster.py): branches of one run train at the same time on the two nodes, a
request no node meets and an address nobody answers at are refused in one line before anything trains, and the local
path never imports Ray. The config tests need no cluster."""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from helpers_tiny import step_keys, tiny_raw
from ray_cluster import free_port, is_loopback, listening_addresses, ray_env, session_members, two_node_cluster

from fluxflow.checkpoints.ref import StepNode, StepOutcome
from fluxflow.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
BRANCHES = ["left", "right"]
NODE_LINE = re.compile(r"^  (\w+): epochs_done, 1 epoch, .*, on Ray node (\w+) \((.+)\)$", re.M)


def pipeline(out: Path, address: str | None, branch_resources: list[dict], **root_resources) -> dict:
    """A root step and one branch per entry of `branch_resources`, tiny, on the Ray executor at `address`."""
    steps = [{"name": "warm", "n_epochs": 1, "max_steps": 1, "train_vae": True,
              **({"resources": root_resources} if root_resources else {})}]
    steps += [{"name": name, "after": "warm", "n_epochs": 1, "max_steps": 1, "train_vae": True, "resources": res}
              for name, res in zip(BRANCHES, branch_resources)]
    raw = tiny_raw(out, steps, dataset_size=8, no_samples=True)
    raw["training"]["executor"] = {"kind": "ray", **({"address": address} if address else {})}
    raw["tracking"] = {"experiment_name": "ray-executor"}
    return raw


def train(raw: dict, directory: Path, prefect_home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`fluxflow-train` on `raw` in `directory` (its ./mlflow.db), stdout and stderr together."""
    config = directory / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = ray_env(PREFECT_HOME=str(prefect_home))  # as the test cluster's nodes: a driver at 127.0.0.1 like them
    return subprocess.run([sys.executable, "-m", "flows.cli_train", "--config", str(config), "--quiet"], cwd=directory,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


# -- no cluster --------------------------------------------------------------------------------------------------


def test_resources_merge_from_defaults_and_change_no_step_key(tmp_path):
    raw = pipeline(tmp_path, None, [{"custom": {"node_a": 1}, "memory": "1GiB"}, {"gpus": 0}])
    raw["training"]["pipeline"]["defaults"] = {"resources": {"cpus": 2, "custom": {"ssd": 1}}}
    config = load_config(raw).config
    left, right = config.step("left").resources, config.step("right").resources
    assert (left.cpus, left.memory, left.custom) == (2, 2**30, {"ssd": 1, "node_a": 1})
    assert (right.cpus, right.gpus, right.custom) == (2, 0, {"ssd": 1})
    plain = dict(raw, training=dict(raw["training"], executor={"kind": "local"}))
    plain["training"]["pipeline"] = {k: v for k, v in raw["training"]["pipeline"].items() if k != "defaults"}
    plain["training"]["pipeline"]["steps"] = [{k: v for k, v in s.items() if k != "resources"}
                                              for s in raw["training"]["pipeline"]["steps"]]
    local = load_config(plain).config
    assert step_keys(config) == step_keys(local)  # where a step runs changes nothing it trains
    assert "executor" not in local.model_dump()["training"]  # the default leaves dumps (config hash) as before
    assert config.training.executor.ray_address() == os.environ.get("RAY_ADDRESS", "auto")


def test_requests_ray_would_refuse_are_reported_at_load(tmp_path):
    raw = pipeline(tmp_path, None, [{"gpus": 1.5}, {"custom": {"GPU": 1, "node_b": 0}}])
    with pytest.raises(ConfigError) as caught:
        load_config(raw)
    assert [str(issue) for issue in caught.value.issues] == [
        "training.pipeline.steps[1].resources.gpus: 1.5: Ray shares a GPU only below 1; above that ask for a whole "
        "number",
        "training.pipeline.steps[2].resources.custom.GPU: is Ray's own resource: set resources.gpus instead",
        "training.pipeline.steps[2].resources.custom.node_b: 0: must be above 0",
    ]
    # Below Ray's unit: a ValueError at submission, after the steps before it trained, that ended the whole flow.
    raw = pipeline(tmp_path, None, [{"cpus": 0.00001}, {"custom": {"node_b": 0.00005}, "gpus": 0.0001}])
    with pytest.raises(ConfigError) as caught:
        load_config(raw)
    assert [str(issue) for issue in caught.value.issues] == [
        "training.pipeline.steps[1].resources.cpus: 1e-05: Ray counts resources in units of 0.0001; ask for 0 or at "
        "least 0.0001",
        "training.pipeline.steps[2].resources.custom.node_b: 5e-05: Ray counts resources in units of 0.0001; ask "
        "for 0 or at least 0.0001"]
    raw = pipeline(tmp_path, None, [{"memory": "lots"}])
    raw["training"]["executor"]["kind"] = "slurm"
    with pytest.raises(ConfigError) as caught:
        load_config(raw)
    assert len(caught.value.issues) == 2 and "'local' or 'ray'" in str(caught.value)
    assert "'lots' is not a size" in str(caught.value)


def test_the_plan_says_where_steps_run_and_what_each_asks_for(tmp_path):
    from fluxflow.config.summary import format_summary

    raw = pipeline(tmp_path, "10.0.0.1:6379", [{"gpus": 1, "memory": "8GB", "custom": {"node_b": 1}}])
    plan = format_summary(load_config(raw).config)
    assert "  Executor: Ray cluster at 10.0.0.1:6379 (each step a Ray task with its resources)" in plan
    assert "  Ray resources: GPUs the step's processes on CUDA, else 0, CPUs 1" in plan  # warm: the defaults
    assert "  Ray resources: GPUs 1, CPUs 1, memory 8.0 GB, node_b 1" in plan  # left
    across = copy.deepcopy(raw)
    across["training"]["distributed"] = {"nodes": 2, "nproc_per_node": 1}  # the step's task waits for its workers
    plan = format_summary(load_config(across).config)
    assert "  Ray resources: GPUs the step's processes on CUDA, else 0, CPUs 1" not in plan
    assert ("  Ray resources: GPUs 0, CPUs 0 for the step's task; its 2 Ray Train workers take one GPU each on CUDA, "
            "else one CPU each") in plan
    raw["training"]["executor"] = {"kind": "local"}
    assert "Ray" not in format_summary(load_config(raw).config)


def test_outcomes_written_before_nodes_existed_still_load():
    ref = {"uri": "a/final.pt", "sha256": "0" * 64, "step_name": "a", "step_key": "k", "global_step": 1, "epoch": 1}
    result = {"step_name": "a", "outcome": "epochs_done", "epochs_done": 1, "final_metrics": {}, "trained": True,
              "resumed_from": None}
    old = {"ref": ref, "result": result, "run_id": None, "run_url": None}
    assert StepOutcome.from_dict(old).node is None
    assert StepOutcome.from_dict(old).to_dict() == old  # the local path writes the same dicts as before
    placed = StepOutcome.from_dict(dict(old, node={"node_id": "abc", "hostname": "gpu-1"}))
    assert placed.node == StepNode("abc", "gpu-1")
    assert StepOutcome.from_dict(placed.to_dict()) == placed


def test_a_step_across_nodes_says_where_each_rank_trained():
    from flows.step_task import workers_tags

    ref = {"uri": "a/final.pt", "sha256": "0" * 64, "step_name": "a", "step_key": "k", "global_step": 1, "epoch": 1}
    result = {"step_name": "a", "outcome": "epochs_done", "epochs_done": 1, "final_metrics": {}, "trained": True,
              "resumed_from": None}
    a, b = {"node_id": "a" * 40, "hostname": "gpu-1"}, {"node_id": "b" * 40, "hostname": "gpu-2"}
    outcome = StepOutcome.from_dict({"ref": ref, "result": result, "run_id": None, "run_url": None,
                                     "node": a, "workers": [a, a, b]})
    assert outcome.workers == (StepNode(**a), StepNode(**a), StepNode(**b))
    assert StepOutcome.from_dict(outcome.to_dict()) == outcome
    assert outcome.placement() == ("3 Ray Train workers: ranks 0, 1 on Ray node aaaaaaaaaaaa (gpu-1); "
                                   "rank 2 on Ray node bbbbbbbbbbbb (gpu-2)")
    assert StepOutcome.from_dict(dict(outcome.to_dict(), workers=[])).placement() == "Ray node aaaaaaaaaaaa (gpu-1)"
    assert workers_tags(outcome.workers) == {"fluxflow.ray_train_workers": json.dumps([a, a, b])}
    assert workers_tags(()) == {}


TWO_NODES = [{"NodeID": f"{name}0000000000000", "Alive": True,
              "Resources": {"CPU": 1.0, "memory": 20e9, name: 1.0, "object_store_memory": 1e8}}
             for name in ("node_a", "node_b")]


def test_a_step_needing_more_of_one_resource_than_any_node_has_says_which(tmp_path):
    from flows.ray_steps import Infeasible, RaySteps

    steps = RaySteps(load_config(pipeline(tmp_path, None, [{"memory": "4TB"}])).config)
    steps.nodes = TWO_NODES
    with pytest.raises(Infeasible, match=r"^step left asks Ray for 1 CPU, 4000.0 GB memory: no node has 4000.0 GB "
                                         r"memory \(the cluster's 2 nodes: node node_a000000: 1 CPU, 20.0 GB memory"):
        steps.request_for(steps.config.step("left"))


def test_a_step_only_a_node_that_died_since_the_run_joined_could_run_is_refused_when_submitted(tmp_path, monkeypatch):
    """The node list was read once, when the run joined the cluster: a step needing a node lost since (right, on
    node_b) was submitted, and waited for it with no word until Ctrl-C."""
    import ray

    from flows.ray_steps import Infeasible, RaySteps

    steps = RaySteps(load_config(pipeline(tmp_path, None, [{"custom": {"node_b": 1}}])).config)
    steps.nodes = TWO_NODES  # as joined
    monkeypatch.setattr(ray, "nodes", lambda: [TWO_NODES[0], dict(TWO_NODES[1], Alive=False)])  # node_b died
    with pytest.raises(Infeasible, match=r"^step left asks Ray for 1 CPU, node_b: 1: no node offers node_b \(the "
                                         r"cluster's 1 node: node node_a000000: "):
        steps.submit(None, steps.config.step("left"), {})


def test_the_steps_lines_ray_prints_have_no_colour_codes_in_a_file(monkeypatch, tmp_path):
    """`fluxflow-train ... > run.log` had `^[[36m(pipeline-step pid=...)^[[0m` on every line a step printed."""
    from flows.ray_steps import plain_worker_lines

    monkeypatch.delenv("RAY_COLOR_PREFIX", raising=False)
    with open(tmp_path / "run.log", "w") as log_file:
        plain_worker_lines(log_file)
    assert os.environ["RAY_COLOR_PREFIX"] == "0"  # read by Ray's printer in this process, line by line
    monkeypatch.setenv("RAY_COLOR_PREFIX", "1")  # the user's choice stays
    with open(tmp_path / "run.log", "w") as log_file:
        plain_worker_lines(log_file)
    assert os.environ["RAY_COLOR_PREFIX"] == "1"


def test_a_flow_run_refuses_a_child_step_no_node_can_run_before_any_step_is_submitted(tmp_path, monkeypatch):
    """A deployment's flow run has no fluxflow-train preflight before it: entering the flow's RaySteps checks every
    step (not only the one being submitted), so the parent does not train first."""
    import prefect_ray

    from flows.ray_steps import Infeasible, RaySteps

    runners = []

    class Runner:  # the RayTaskRunner the step tasks would be submitted through
        def __init__(self, **kwargs):
            runners.append(self)

        def __enter__(self):
            raise AssertionError("the task runner started before every step was checked")

    def join(self):
        self.nodes = TWO_NODES

    monkeypatch.setattr(RaySteps, "join", join)
    monkeypatch.setattr(prefect_ray, "RayTaskRunner", Runner)
    config = load_config(pipeline(tmp_path, None, [{}, {"gpus": 1}])).config  # warm and left fit, right does not
    with pytest.raises(Infeasible, match=r"^step right asks Ray for 1 GPU, 1 CPU: no node offers GPU "):
        RaySteps(config).__enter__()
    assert runners == []


def test_a_step_across_more_nodes_than_the_cluster_has_is_refused_before_the_run(tmp_path):
    """`nodes` × `nproc_per_node` Train workers, one CPU each here, on a cluster of 2 CPUs: refused where
    fluxflow-train checks every step (exit 2), not when Ray Train is started (exit 1, after the run began)."""
    from flows.ray_steps import Infeasible, RaySteps

    raw = pipeline(tmp_path, None, [])
    raw["training"].update(batch_size=6, distributed={"nodes": 3})
    steps = RaySteps(load_config(raw).config)
    steps.nodes = TWO_NODES
    with pytest.raises(Infeasible, match="^step warm: training.distributed asks for 3 workers with one CPU each; "
                                         "the Ray cluster has 2 CPUs in all$"):
        steps.request_for(steps.config.step("warm"))
    raw["training"].update(batch_size=4, distributed={"nodes": 2})
    steps = RaySteps(load_config(raw).config)
    steps.nodes = TWO_NODES
    assert steps.request_for(steps.config.step("warm")) == {}  # its task holds nothing, its workers the 2 CPUs


EXPECTED = "expected the head's host:port, ray://host:port (Ray Client) or auto"


@pytest.mark.parametrize("address, says", [
    ("nonsense", EXPECTED),
    ("127.0.0.1", EXPECTED),
    ("http://127.0.0.1:8265", f"{EXPECTED}; an http:// address is the dashboard's (Ray Jobs)"),
])
def test_an_address_that_is_no_host_and_port_says_what_is_expected(address, says):
    from flows.ray_steps import ClusterUnreachable, probe

    line = f"{address} is not a Ray cluster's address (training.executor.address, else RAY_ADDRESS, else auto): {says}"
    with pytest.raises(ClusterUnreachable, match=f"^{re.escape(line)}$"):
        probe(address)


@pytest.mark.parametrize("address, port", [("127.0.0.1:99999", "99999"), ("ray://127.0.0.1:0", "0")])
def test_an_address_whose_port_is_out_of_range_is_refused_without_a_connection(address, port, monkeypatch):
    """99999 was probed as 34463 (99999 % 65536): whatever listened there answered for the cluster."""
    from flows.ray_steps import ClusterUnreachable, probe

    def connect(*args, **kwargs):
        raise AssertionError(f"connected to {args}")

    monkeypatch.setattr(socket, "create_connection", connect)
    line = (f"{address} is not a Ray cluster's address (training.executor.address, else RAY_ADDRESS, else auto): its "
            f"port {port} is out of range (1-65535)")
    with pytest.raises(ClusterUnreachable, match=f"^{re.escape(line)}$"):
        probe(address)


def serve_once(answer: bytes):
    """A server on a free port of 127.0.0.1 that reads what a client sends and answers `answer` (in a thread, for
    one connection); returns its address."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        with listener, listener.accept()[0] as connection, contextlib.suppress(OSError):
            connection.recv(1024)
            connection.sendall(answer)
            connection.recv(1024)  # until the client closes

    threading.Thread(target=serve, daemon=True).start()
    return f"127.0.0.1:{listener.getsockname()[1]}"


def test_an_address_where_something_else_listens_is_refused_at_once():
    """The dashboard's port (HTTP) instead of the GCS's: ray.init would retry it for minutes; the probe says so."""
    from flows.ray_steps import ClusterUnreachable, probe

    http = serve_once(b"HTTP/1.0 404 Not Found\r\n\r\n")
    with pytest.raises(ClusterUnreachable, match=f"^{http} is not a Ray cluster's address .*answered 'HTTP/1.0 404 "
                                                 "Not Found', not gRPC; give the head's GCS port"):
        probe(http)
    grpc = serve_once(bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))  # an HTTP/2 server's first frame: SETTINGS
    assert probe(grpc) == grpc


def test_with_tls_an_address_is_only_checked_to_answer(monkeypatch):
    """Ray's gRPC over TLS (RAY_USE_TLS) greets with a handshake, not HTTP/2 in the clear: not refused for that."""
    from flows.ray_steps import probe

    monkeypatch.setenv("RAY_USE_TLS", "1")
    tls = serve_once(b"\x16\x03\x03")  # what a TLS server might send back to a cleartext greeting
    assert probe(tls) == tls


def test_auto_with_no_cluster_on_this_machine_names_the_settings_not_ray_s_flag(monkeypatch):
    """Ray's own words for it: "... by setting `--address` flag or `RAY_ADDRESS` environment variable"; fluxflow-train
    has no --address."""
    from ray._private import services

    from flows.ray_steps import ClusterUnreachable, probe

    def no_cluster(address):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to by "
                              "setting `--address` flag or `RAY_ADDRESS` environment variable.")

    monkeypatch.setattr(services, "canonicalize_bootstrap_address_or_die", no_cluster)
    with pytest.raises(ClusterUnreachable) as caught:
        probe("auto")
    assert str(caught.value) == ("no Ray cluster answers at auto (training.executor.address, else RAY_ADDRESS, else "
                                 "auto): no cluster was started on this machine (`ray start --head`, or `make "
                                 "ray-cluster`)")


@pytest.mark.slow
def test_an_address_nobody_answers_at_exits_2_with_one_line(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    done = train(pipeline(tmp_path / "out", address, []), tmp_path, tmp_path / "prefect", timeout=120)
    assert done.returncode == 2, done.stdout[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines == [f"❌ no Ray cluster answers at {address} (training.executor.address, else RAY_ADDRESS, else "
                     "auto): [Errno 111] Connection refused"], done.stdout[-3000:]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def prefect_home(tmp_path_factory) -> Path:
    """One Prefect home for the module's runs: the temporary server starts faster on an existing database."""
    return tmp_path_factory.mktemp("prefect-home")


@pytest.mark.slow
def test_the_local_path_never_imports_ray(tmp_path, prefect_home):
    """A whole local run (the flow, its task, MLflow) in one interpreter that has prefect-ray installed."""
    raw = tiny_raw(tmp_path / "out", [{"name": "warm", "n_epochs": 1, "max_steps": 1, "train_vae": True}],
                   dataset_size=8, no_samples=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    probe = ("import sys\nfrom flows.cli_train import main\ncode = main(['--config', 'config.yaml', '--quiet'])\n"
             "print('EXIT', code, 'RAY', sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PREFECT_HOME=str(prefect_home))
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert "EXIT 0 RAY []" in done.stdout, (done.stdout + done.stderr)[-3000:]


# -- a real two-node cluster -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Nodes `node_a` and `node_b`; their steps named in BRANCHES wait at their start until both have started
    (flows/together.py), so a run passes only if its branches train at the same time."""
    directory = tmp_path_factory.mktemp("ray")
    (directory / "together").mkdir()
    with two_node_cluster(directory, FLUXFLOW_TEST_TOGETHER=f"{directory / 'together'}:{','.join(BRANCHES)}") as c:
        yield c


@pytest.mark.slow
def test_branches_of_one_run_train_at_once_on_two_nodes(cluster, tmp_path, prefect_home):
    from mlflow.tracking import MlflowClient

    raw = pipeline(tmp_path / "out", cluster.address, [{"custom": {"node_a": 1}}, {"custom": {"node_b": 1}}])
    done = train(raw, tmp_path, prefect_home)
    assert done.returncode == 0, done.stdout[-5000:]
    nodes = {step: node for step, node, _ in NODE_LINE.findall(done.stdout)}  # from the flow's StepOutcomes
    assert sorted(nodes) == ["left", "right", "warm"], done.stdout[-5000:]
    assert nodes["left"] != nodes["right"]
    assert f"Step left runs on Ray node {nodes['left']}" in done.stdout  # the step's own console line

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ray-executor")
    runs = {r.data.tags["fluxflow.step_name"]: r for r in client.search_runs([experiment.experiment_id])
            if r.data.tags.get("fluxflow.kind") == "step"}
    assert sorted(runs) == ["left", "right", "warm"]
    assert all(run.info.status == "FINISHED" for run in runs.values())
    tagged = {step: run.data.tags["fluxflow.ray_node_id"] for step, run in runs.items()}
    assert {step: node[:12] for step, node in tagged.items()} == nodes
    assert runs["left"].data.tags["fluxflow.hostname"]


@pytest.mark.slow
@pytest.mark.parametrize("resources, says", [
    ({"gpus": 4}, "asks Ray for 4 GPU, 1 CPU: no node offers GPU"),
    ({"custom": {"tpu": 1}}, "asks Ray for 1 CPU, tpu: 1: no node offers tpu"),
    ({"custom": {"node_a": 1, "node_b": 1}}, "asks Ray for 1 CPU, node_a: 1, node_b: 1: no single node has all"),
])
def test_a_request_no_node_meets_exits_2_with_one_line_before_anything_trains(cluster, tmp_path, prefect_home,
                                                                               resources, says):
    """Checked for every step before the run starts: `right` (the second branch) is refused, nothing trains."""
    done = train(pipeline(tmp_path / "out", cluster.address, [{}, resources]), tmp_path, prefect_home, timeout=120)
    assert done.returncode == 2, done.stdout[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"❌ step right {says}"), done.stdout[-3000:]
    assert "node_a: 1" in lines[0] and "node_b: 1" in lines[0]  # what the two nodes offer
    assert not (tmp_path / "out" / "checkpoints").exists()


@pytest.mark.slow
def test_the_test_cluster_listens_on_loopback_only(cluster):
    """After the runs above: GCS, raylets, agents and the workers they left listen on 127.0.0.1, nothing else."""
    found = listening_addresses(session_members(cluster.sessions))
    assert len(found) >= 6 and all(is_loopback(address) for address, _ in found), sorted(found)


@pytest.mark.slow
def test_in_the_flow_a_request_no_node_meets_fails_before_submission(cluster, tmp_path, monkeypatch):
    """What a deployment's flow run (no fluxflow-train to check first) does: the submitter refuses the step, at its
    start (every step) and again at submission (the nodes may have changed since)."""
    from flows.ray_steps import Infeasible, RaySteps

    from ray._private import ray_constants

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # this process joins the test cluster as a driver,
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # at 127.0.0.1 like its nodes (LOOPBACK)

    config = load_config(pipeline(tmp_path, cluster.address, [{"gpus": 2}])).config
    with pytest.raises(Infeasible, match="step left asks Ray for 2 GPU, 1 CPU: no node offers GPU"):
        RaySteps(config).__enter__()
    import ray

    ray.shutdown()
    feasible = load_config(pipeline(tmp_path, cluster.address, [{}])).config
    with RaySteps(feasible) as steps:
        assert len(steps.nodes) == 2
        with pytest.raises(Infeasible, match="step left asks Ray for 2 GPU, 1 CPU: no node offers GPU"):
            steps.submit(None, config.step("left"), {})
        assert steps.submitted == []


@pytest.mark.slow
def test_nodes_without_the_stores_credentials_are_refused_before_the_run(cluster, s3, tmp_path, monkeypatch):
    """The driver has the store's credentials and endpoint (the `s3` fixture's environment), the nodes do not (their
    `ray start` ran without them): before, fluxflow-train's checks passed and the first step failed on its node."""
    import ray

    from flows.ray_steps import RaySteps, StoreUnreachable, preflight
    from ray._private import ray_constants

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # this process joins the test cluster as a driver,
    monkeypatch.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)  # at 127.0.0.1 like its nodes (LOOPBACK)
    raw = pipeline(tmp_path, cluster.address, [])
    raw["output"]["output_path"] = "s3://fluxflow/ray-run"
    config = load_config(raw).config
    says = (r"^Ray node \w{12} cannot use the output s3://fluxflow/ray-run: no credentials for the object store .*"
            r"give every node the store's credentials and endpoint")
    try:
        with pytest.raises(StoreUnreachable, match=says):
            preflight(config)
        with pytest.raises(StoreUnreachable, match=says), RaySteps(config):  # a deployment's flow run: no preflight
            pass
    finally:
        ray.shutdown()
