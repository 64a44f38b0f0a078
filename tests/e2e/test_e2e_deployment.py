"""End to end, as an operator runs it: a real Prefect server, the `gpu` pool, the deployments of
deployments/prefect.yaml, a process worker, and `prefect deployment run fluxflow-pipeline/manual --watch` on a tiny
config; then a long run of the same deployment cancelled with `prefect flow-run cancel` once it trains.

Everything is started through the same scripts as `make server`, `make worker` and `make deploy`, on a free loopback
port, with its own PREFECT_HOME, run directory (pid files, logs) and MLflow store under tmp. Every process started
is stopped in `finally`, by process group, including flow-run processes (Prefect 3.9 starts those in a session of
their own, so they are found as descendants of the worker). Takes 1-1.5 minutes on 2 cores.
"""
from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from process_groups import group_alive

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = "configs/tiny_test.yaml"  # relative to the checkout the worker runs in, as a user would pass it


def nightly_crons() -> list[str]:
    import yaml

    (nightly,) = [d for d in yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())["deployments"]
                  if d["name"] == "nightly-retrain"]
    return [s["cron"] for s in nightly["schedules"]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], env: dict, timeout: float) -> subprocess.CompletedProcess:
    """Run a command in its own session; on timeout kill its whole group, not only the direct child."""
    proc = subprocess.Popen(args, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"{' '.join(args)} did not finish within {timeout}s:\n{out[-4000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, None)


def descendants(pid: int) -> list[int]:
    """All live descendants of pid, from /proc (children started in a new session keep their parent pid)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def stop_everything(run_dir: Path) -> None:
    """TERM then KILL every process group the scripts recorded, and the groups of their descendants."""
    leaders = [int(p.read_text()) for p in run_dir.glob("*.pid")]
    groups = set(leaders)
    for pid in leaders:
        for child in descendants(pid):
            try:
                groups.add(os.getpgid(child))
            except ProcessLookupError:
                pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(group_alive(g) for g in groups):
            time.sleep(0.2)


async def flow_run_and_task_runs(api_url: str, run_name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            (flow_run,) = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
            )
            deployment = await client.read_deployment(flow_run.deployment_id)
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]})
            )
            nightly = await client.read_deployment_by_name("fluxflow-pipeline/nightly-retrain")
            limit = await client.read_concurrency_limit_by_tag("gpu")
            return flow_run, deployment, task_runs, nightly, limit


async def flow_run_log(api_url: str, flow_run_id) -> list[str]:
    """The messages the Prefect API holds for one flow run (what its page in the UI shows under Logs)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    messages, page = [], 200  # the API answers at most 200 logs a request
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            while True:
                logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                              limit=page, offset=len(messages))
                messages += [log.message for log in logs]
                if len(logs) < page:
                    return messages


def cancel_a_long_run(prefect: str, env: dict, api_url: str, tmp_path: Path):
    """Start the manual deployment on a step far longer than the test, cancel it once it trains, and return the
    cancelled flow run (in its final state) and its output directory."""
    import yaml
    from helpers_tiny import tiny_raw

    out = tmp_path / "long-out"
    config_file = tmp_path / "long.yaml"  # 16,000 batches of a tiny VAE: minutes, unless cancelled
    config_file.write_text(yaml.safe_dump(tiny_raw(out, [{"name": "long", "n_epochs": 1, "train_vae": True}],
                                                   dataset_size=64_000, checkpoint_save_interval=100_000,
                                                   log_interval=10, no_samples=True)))
    run_name = f"e2e-cancel-{uuid.uuid4().hex[:8]}"
    started = run_cli([prefect, "deployment", "run", "fluxflow-pipeline/manual", "--param", f"config={config_file}",
                       "--flow-run-name", run_name], env, timeout=120)
    assert started.returncode == 0, started.stdout
    metrics = out / "graph" / "training_metrics_long.jsonl"
    deadline = time.monotonic() + 240
    while not metrics.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metrics.exists(), "the long run did not start training"
    flow_run = asyncio.run(read_flow_run(api_url, run_name))
    cancel = run_cli([prefect, "flow-run", "cancel", str(flow_run.id)], env, timeout=60)
    assert cancel.returncode == 0, cancel.stdout
    deadline = time.monotonic() + 120
    while not flow_run.state.is_final() and time.monotonic() < deadline:
        time.sleep(0.5)
        flow_run = asyncio.run(read_flow_run(api_url, run_name))
    return flow_run, out


async def read_flow_run(api_url: str, run_name: str):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            (flow_run,) = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name]))
            )
            return flow_run


def test_manual_deployment_runs_each_step_as_a_task_and_records_nested_mlflow_runs(tmp_path):
    from mlflow.tracking import MlflowClient

    from fluxflow.checkpoints.io import load_checkpoint
    from fluxflow.config import load_config
    from fluxflow.config.schema import TrackingConfig

    config = load_config(REPO / TINY_CONFIG).config
    steps = [s.name for s in config.resolved_steps()]
    experiment_name = config.tracking.experiment_name
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    run_dir = tmp_path / "run"
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = dict(os.environ)
    env.pop("FLUXFLOW_GPU_TAG", None)  # the single-host default: steps take slots of the limit `gpu`
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api_url,
        FLUXFLOW_PREFECT_PORT=str(port),
        FLUXFLOW_RUN_DIR=str(run_dir),
        # Reaches the flow-run processes through the worker's environment.
        MLFLOW_TRACKING_URI=tracking_uri,
        PREFECT_WORKER_QUERY_SECONDS="1",  # pick the run up at once instead of within 10 s
    )
    # The experiments exist before the runs, with their artifacts under tmp: created by the flow, their artifact root
    # would be ./mlruns of the worker's checkout (this repository). The cancelled long run's config (helpers_tiny)
    # keeps the default experiment name.
    for name in {experiment_name, TrackingConfig().experiment_name}:
        MlflowClient(tracking_uri).create_experiment(name, artifact_location=str(tmp_path / "mlartifacts" / name))

    prefect = str(REPO / ".venv" / "bin" / "prefect")
    run_name = f"e2e-{uuid.uuid4().hex[:8]}"
    try:
        for script in ("server.sh", "worker.sh", "deploy.sh"):
            done = run_cli(["bash", f"scripts/{script}"], env, timeout=240)
            assert done.returncode == 0, f"{script} failed:\n{done.stdout}"
        watched = run_cli(
            [prefect, "deployment", "run", "fluxflow-pipeline/manual",
             "--param", f"config={TINY_CONFIG}", "--param", f"output_dir={tmp_path / 'out'}",
             "--flow-run-name", run_name, "--watch", "--watch-interval", "2"],
            env, timeout=420,
        )
        worker_log = (run_dir / "prefect-worker.log").read_text()
        assert watched.returncode == 0, f"{watched.stdout[-3000:]}\n--- worker log ---\n{worker_log[-6000:]}"

        flow_run, deployment, task_runs, nightly, limit = asyncio.run(flow_run_and_task_runs(api_url, run_name))
        assert deployment.name == "manual" and deployment.work_pool_name == "gpu"
        # The checkout is the worker's, filled per run (was fixed at deploy time to the deploying checkout).
        assert deployment.pull_steps[-1] == {"prefect.deployments.steps.set_working_directory": {
            "directory": "{{ $FLUXFLOW_HOME }}"}}
        assert nightly.work_pool_name == "gpu" and [s.schedule.cron for s in nightly.schedules] == nightly_crons()
        assert limit.concurrency_limit == 1  # created by worker.sh
        assert flow_run.state.is_completed(), flow_run.state
        assert sorted(t.name for t in task_runs) == sorted(steps)  # one task run per step, named after it
        assert all(t.state.is_completed() for t in task_runs)
        assert limit.active_slots == []  # every slot of the `gpu` limit the steps took was given back
        # The UI's log of the run shows each step train: its console lines, as the worker's terminal printed them.
        log = asyncio.run(flow_run_log(api_url, flow_run.id))
        for index, name in enumerate(steps, start=1):
            line = re.compile(rf"^\[\d\d:\d\d:\d\d\] Step {name} \({index}/{len(steps)}\) \| Epoch .* \| Batch ")
            assert any(line.match(message) for message in log), f"no console line of step {name} in {log}"
            assert any(line.match(text) for text in worker_log.splitlines()), f"step {name} printed no console line"

        cancelled, stopped_out = cancel_a_long_run(prefect, env, api_url, tmp_path)
    finally:
        stop_everything(run_dir)

    # A cancelled run (the worker sends SIGTERM to the flow-run process) stops its step at the next batch and saves
    # that batch: a re-run resumes there instead of at the last periodic checkpoint.
    assert cancelled.state.is_cancelled(), cancelled.state
    found = re.search(r"Interrupted step long at epoch 1, batch (\d+): saved",
                      (run_dir / "prefect-worker.log").read_text())
    assert found, "the step did not save where it stopped"
    meta = load_checkpoint(stopped_out / "checkpoints" / "long" / "latest.pt")["pipeline_metadata"]
    assert (meta["batch"], meta["completed"]) == (int(found.group(1)), False)
    assert not (stopped_out / "checkpoints" / "long" / "final.pt").exists()

    mlflow = MlflowClient(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    runs = mlflow.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("prefect.flow_run_id") == str(flow_run.id)]
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in nested) == sorted(steps)
    assert all(r.data.metrics for r in nested), "every step logged metrics"
    assert all(r.info.status == "FINISHED" for r in [parent, *nested])
