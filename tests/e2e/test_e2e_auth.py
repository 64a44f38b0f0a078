"""Servers that other hosts can reach let no one in (issue 22, item 4), run as an operator runs them.

One Prefect server and one MLflow server for the module, started through `scripts/server.sh` and `scripts/mlflow_ui.sh`
with secret files (FLUXFLOW_PREFECT_AUTH_FILE, FLUXFLOW_MLFLOW_AUTH_FILE) on free loopback ports, their state under
tmp. Then: requests without or with wrong credentials get 401 from both; a worker (scripts/worker.sh, deploy.sh, a
deployment run) and `fluxflow-train` train at the same time with the credentials of the files, while the process list
is sampled; and no password is found in what they leave: console and worker output, server logs, metrics JSONL,
Prefect logs, flow-run parameters, MLflow params and tags, the sampled command lines. Every process started is stopped
by process group in `finally`.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from mlflow_server import free_port
from test_e2e_deployment import run_cli, stop_everything
from train_cli import REPO, start_train, write_vae_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

PREFECT_SECRET, MLFLOW_SECRET = "Pr3fect-only-4-us", "Ml-fl0w-only-4-us"  # distinct: a leak names its source
EXPERIMENT = "auth-e2e"
VENV_BIN = Path(sys.executable).parent  # the scripts' tools (prefect, mlflow) are this interpreter's


@pytest.fixture(scope="module")
def servers(tmp_path_factory, mlflow_template):
    """Both servers with authentication on; yields the environment a client with the secret files runs in."""
    from mlflow.tracking import MlflowClient

    home = tmp_path_factory.mktemp("auth")
    secrets = home / "secrets"
    secrets.mkdir(mode=0o700)
    (secrets / "prefect").write_text(f"ops:{PREFECT_SECRET}\n")
    (secrets / "mlflow").write_text(f"tracker:{MLFLOW_SECRET}\n")
    store = home / "mlflow.db"
    store.write_bytes(mlflow_template.read_bytes())
    # Created before the server, with its artifacts under tmp (through the server they would go to the checkout).
    MlflowClient(f"sqlite:///{store}").create_experiment(EXPERIMENT, artifact_location=str(home / "artifacts"))
    prefect_port, mlflow_port = free_port(), free_port()
    env = dict(os.environ, PREFECT_HOME=str(home / "prefect-home"), FLUXFLOW_RUN_DIR=str(home / "run"),
               FLUXFLOW_PREFECT_PORT=str(prefect_port), FLUXFLOW_MLFLOW_PORT=str(mlflow_port),
               FLUXFLOW_MLFLOW_STORE=f"sqlite:///{store}", FLUXFLOW_MLFLOW_AUTH_DB=f"sqlite:///{home / 'auth.db'}",
               FLUXFLOW_PREFECT_AUTH_FILE=str(secrets / "prefect"), FLUXFLOW_MLFLOW_AUTH_FILE=str(secrets / "mlflow"),
               PREFECT_API_URL=f"http://127.0.0.1:{prefect_port}/api",
               MLFLOW_TRACKING_URI=f"http://127.0.0.1:{mlflow_port}", PREFECT_WORKER_QUERY_SECONDS="1",
               FLUXFLOW_VENV_BIN=os.environ.get("FLUXFLOW_VENV_BIN", str(VENV_BIN)))
    for name in ("PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "FLUXFLOW_GPU_TAG"):
        env.pop(name, None)
    try:
        started = [subprocess.Popen(["bash", f"scripts/{script}"], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, start_new_session=True)
                   for script in ("server.sh", "mlflow_ui.sh")]  # at once: their start-ups overlap
        starting: set[str] = set()  # the scripts read the secret files: sample what they run meanwhile
        deadline = time.monotonic() + 240
        while any(p.poll() is None for p in started) and time.monotonic() < deadline:
            starting |= command_lines()
            time.sleep(0.2)
        for process in started:
            out, _ = process.communicate(timeout=10)
            assert process.returncode == 0, out
        assert any("mlflow_auth.py" in c for c in starting)
        assert not any(secret in c for c in starting for secret in (PREFECT_SECRET, MLFLOW_SECRET))
        yield env, home
    finally:
        stop_everything(home / "run")


def trainer_env(env: dict) -> dict:
    """`env` for a `fluxflow-train` child: one torch thread, this checkout first on the path."""
    return dict(env, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))


def status_of(url: str, user_password: str | None, method: str = "GET") -> int:
    request = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None,
                                     headers={"Content-Type": "application/json"})
    if user_password:
        request.add_header("Authorization", "Basic " + base64.b64encode(user_password.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_both_servers_answer_401_without_or_with_wrong_credentials(servers):
    env, _ = servers
    prefect = (f"{env['PREFECT_API_URL']}/flows/filter", "POST", "ops", PREFECT_SECRET)
    mlflow = (f"{env['MLFLOW_TRACKING_URI']}/api/2.0/mlflow/experiments/search?max_results=1", "GET", "tracker",
              MLFLOW_SECRET)
    for url, method, user, secret in (prefect, mlflow):
        answers = [status_of(url, given, method) for given in (None, f"{user}:wrong-password-123", f"{user}:{secret}")]
        assert answers == [401, 401, 200], url
    assert status_of(f"{env['PREFECT_API_URL']}/health", None) == 200  # what the scripts and health checks poll
    assert status_of(f"{env['MLFLOW_TRACKING_URI']}/health", None) == 200


def test_clients_without_the_right_credentials_are_refused_with_one_line(servers, tmp_path):
    env, _ = servers
    config, _ = write_vae_pipeline(tmp_path, 4, 4, EXPERIMENT)
    wrong = tmp_path / "wrong"
    wrong.write_text("tracker:not-the-password\n")
    for unset, value, server in (("FLUXFLOW_PREFECT_AUTH_FILE", None, "Prefect"),
                                 ("FLUXFLOW_MLFLOW_AUTH_FILE", str(wrong), "MLflow")):
        child = trainer_env(env)
        child.pop(unset)
        if value:
            child[unset] = value
        done = subprocess.run([sys.executable, "-m", "flows.cli_train", "--config", str(config), "--quiet"],
                              env=child, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert f"the {server} server at" in done.stderr and "(401 Unauthorized)" in done.stderr, done.stderr
        assert not (tmp_path / "out" / "checkpoints").exists()  # refused before training
    worker_env = {k: v for k, v in env.items() if k != "FLUXFLOW_PREFECT_AUTH_FILE"}
    worker_env["FLUXFLOW_RUN_DIR"] = str(tmp_path / "run")
    refused = run_cli(["bash", "scripts/worker.sh"], worker_env, timeout=120)
    assert refused.returncode == 1 and "the Prefect server at" in refused.stdout, refused.stdout
    assert not (tmp_path / "run" / "prefect-worker.pid").exists()


def command_lines() -> set[str]:
    """Every process's command line now (what `ps -eo args` shows)."""
    found = set()
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            found.add(cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


async def prefect_records(api_url: str, flow_run_ids: list[str]) -> list:
    """The flow runs, their task runs and every log line the Prefect API holds for them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url, PREFECT_API_AUTH_STRING: f"ops:{PREFECT_SECRET}"}):
        async with get_client() as client:
            runs = [await client.read_flow_run(run_id) for run_id in flow_run_ids]
            tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": flow_run_ids}))
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=flow_run_ids)), limit=200)
            return [runs, tasks, logs]


def test_a_worker_run_and_fluxflow_train_work_with_credentials_and_leave_no_secret(servers, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    env, home = servers
    for script in ("deploy.sh", "worker.sh"):  # deploy first: it creates the pool and limit the worker would
        done = run_cli(["bash", f"scripts/{script}"], env, timeout=180)
        assert done.returncode == 0, done.stdout
    for name in ("deployed", "trained"):
        (tmp_path / name).mkdir()
    deployed_config, deployed_out = write_vae_pipeline(tmp_path / "deployed", 4, 2, EXPERIMENT)
    trained_config, trained_out = write_vae_pipeline(tmp_path / "trained", 4, 2, EXPERIMENT)
    run_name = f"auth-{uuid.uuid4().hex[:8]}"
    # The prefect CLI reads no secret file: its credential comes through its environment, as docs/OPERATIONS.md says.
    cli_env = dict(env, PREFECT_API_AUTH_STRING=f"ops:{PREFECT_SECRET}")
    deployed = subprocess.Popen(
        [str(VENV_BIN / "prefect"), "deployment", "run", "fluxflow-pipeline/manual", "--param",
         f"config={deployed_config}", "--flow-run-name", run_name, "--watch", "--watch-interval", "1"],
        env=cli_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = tmp_path / "fluxflow-train.log"
    trained = start_train(trained_config, trainer_env(env), log)
    seen: set[str] = set()
    try:
        while deployed.poll() is None or trained.poll() is None:
            seen |= command_lines()
            time.sleep(0.2)
        watched = deployed.stdout.read()
    finally:
        for child in (deployed, trained):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, 9)
    console = log.read_text()
    worker_log = (home / "run" / "prefect-worker.log").read_text()
    assert deployed.returncode == 0, f"{watched[-3000:]}\n--- worker ---\n{worker_log[-4000:]}"
    assert trained.returncode == 0, console[-3000:]

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tracker")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", MLFLOW_SECRET)
    client = MlflowClient(env["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in runs)  # both runs recorded everything
    assert {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId")} == {"warm"}
    flow_run_ids = [r.data.tags["prefect.flow_run_id"] for r in parents]
    prefect = asyncio.run(prefect_records(env["PREFECT_API_URL"], flow_run_ids))
    assert all(run.state.is_completed() for run in prefect[0]) and any(run.name == run_name for run in prefect[0])
    assert any("Step warm" in line.message for line in prefect[2])  # the runs' console lines reached the API

    jsonl = [p.read_text() for out in (deployed_out, trained_out) for p in (out / "graph").glob("*.jsonl")]
    logs = [p.read_text(errors="replace") for p in (home / "run").glob("*.log")]
    flow_runs = [json.dumps(run.model_dump(mode="json")) for run in prefect[0]]  # parameters, job variables, ...
    task_runs = [json.dumps(task.model_dump(mode="json")) for task in prefect[1]]
    prefect_logs = [line.message for line in prefect[2]]
    mlflow_records = [json.dumps({"params": r.data.params, "tags": r.data.tags}) for r in runs]
    places = {"console": [console, watched], "server and worker logs": logs, "metrics JSONL": jsonl,
              "Prefect flow runs": flow_runs, "Prefect task runs": task_runs, "Prefect logs": prefect_logs,
              "MLflow params and tags": mlflow_records, "command lines": sorted(seen)}
    assert jsonl and logs and prefect_logs  # each place holds something to search
    assert any("flows.cli_train" in c for c in seen) and any("worker start" in c for c in seen)  # sampled in time
    for place, texts in places.items():
        for secret in (PREFECT_SECRET, MLFLOW_SECRET):
            assert not any(secret in text for text in texts), f"a password is in the {place}"
