"""What `fluxflow-train` pays to start must not be bought with missing records: the temporary Prefect server started
before the heavy imports or kept from an earlier run (flows/prefect_server.py), a new MLflow store copied from a
template (flows/mlflow_runs.py), no heartbeats on the temporary server, the exit without the interpreter's teardown.
And `--help` / `--version` answer without importing torch, Prefect or MLflow."""
from __future__ import annotations

import importlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import yaml
from closed_pipe import run_into_closed_pipe
from helpers_tiny import tiny_raw
from mlflow.tracking import MlflowClient
from process_groups import alive, kill_all

from flows.cli_common import package_version
from flows.mlflow_runs import prepare_store
from flows.prefect_server import KEPT_SERVER_FILE

REPO = Path(__file__).resolve().parents[2]
STEPS = ["warm", "gan"]
CLIS = ["flows.cli_train", "flows.cli_generate", "flows.cli_compare", "flows.cli_export"]


def _train(config: Path, out: Path, cwd: Path, prefect_home: Path, *flags: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), PREFECT_HOME=str(prefect_home))
    done = subprocess.run([sys.executable, "-m", "flows.cli_train", "--config", str(config), "--output-dir", str(out),
                           "--quiet", *flags], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    return output


def _prefect_records(prefect_home: Path) -> list[tuple[str, str, list[tuple[str, str]]]]:
    """(flow run id, state, [(task run name, state)]) of every flow run in the temporary server's database."""
    with sqlite3.connect(prefect_home / "prefect.db") as db:
        flows = db.execute("SELECT flow_run.id, flow_run.state_type FROM flow_run "
                           "JOIN flow ON flow.id = flow_run.flow_id "
                           "WHERE flow.name = 'fluxflow-pipeline' ORDER BY flow_run.created").fetchall()
        return [(run_id, state, sorted(db.execute("SELECT name, state_type FROM task_run WHERE flow_run_id = ?",
                                                  (run_id,)).fetchall()))
                for run_id, state in flows]


@pytest.mark.slow
def test_a_run_on_the_temporary_server_records_every_flow_task_and_mlflow_run(tmp_path):
    """Two runs in one working directory: the first makes its MLflow store (./mlflow.db, new) and keeps its Prefect
    server (--keep-server); the second finds both. Each leaves a COMPLETED flow run with one COMPLETED task run per
    step in Prefect's database, and an MLflow parent run FINISHED with one FINISHED nested run per step, their params
    and metrics, linked to that flow run."""
    steps = [{"name": "warm", "n_epochs": 1, "train_vae": True},
             {"name": "gan", "n_epochs": 1, "train_vae": True, "gan_training": True}]
    raw = tiny_raw(tmp_path / "unused", steps, dataset_size=16, no_samples=True)
    raw["tracking"] = {"experiment_name": "startup"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    prefect_home = tmp_path / "prefect-home"
    outputs = [tmp_path / "first", tmp_path / "second"]
    kept = None
    try:
        first = _train(config, outputs[0], tmp_path, prefect_home, "--keep-server")
        kept = json.loads((prefect_home / KEPT_SERVER_FILE).read_text())["pid"]
        assert f"kill {kept}" in first
        second = _train(config, outputs[1], tmp_path, prefect_home)
        assert "Using the Prefect server an earlier run kept on http://127.0.0.1:" in second
        assert "Stopping temporary server" not in second
        assert alive(kept)
        # Prefect links each flow run to its UI: the temporary server has none, so no "View at" a dead address.
        assert "View at" not in first + second
    finally:
        if kept:
            kill_all([kept])

    flow_runs = _prefect_records(prefect_home)
    assert [(state, tasks) for _, state, tasks in flow_runs] == [
        ("COMPLETED", [("gan", "COMPLETED"), ("warm", "COMPLETED")])] * 2

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    default = client.get_experiment("0")  # the store was copied from the template, made where the cache is
    assert default.artifact_location == str(tmp_path / "mlruns" / "0")
    experiment = client.get_experiment_by_name("startup")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags["fluxflow.kind"] == "pipeline"]
    assert sorted(r.data.tags["fluxflow.output_dir"] for r in parents) == [str(out) for out in outputs]
    assert sorted(r.data.tags["prefect.flow_run_id"] for r in parents) == sorted(run_id for run_id, *_ in flow_runs)
    for parent in parents:
        assert parent.info.status == "FINISHED"
        assert "prefect.flow_run_url" not in parent.data.tags  # the temporary server has no UI to link to
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert sorted(r.data.tags["fluxflow.step_name"] for r in children) == sorted(STEPS)
        for child in children:
            assert child.info.status == "FINISHED"
            assert child.data.params and "vae_loss" in child.data.metrics
            assert len(client.get_metric_history(child.info.run_id, "vae_loss")) == 4  # every logged batch


def test_a_new_sqlite_store_is_a_copy_of_the_template_and_an_existing_one_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setenv("FLUXFLOW_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    first = tmp_path / "a" / "mlflow.db"
    prepare_store(f"sqlite:///{first}")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"mlflow-{mlflow.__version__}-empty.db"]
    client = MlflowClient(f"sqlite:///{first}")
    client.create_experiment("kept")
    before = first.read_bytes()
    prepare_store(f"sqlite:///{first}")  # exists: untouched
    assert first.read_bytes() == before
    second = tmp_path / "b" / "mlflow.db"
    prepare_store(f"sqlite:///{second}")  # from the template: nothing of the first store's experiments
    names = [e.name for e in MlflowClient(f"sqlite:///{second}").search_experiments()]
    assert names == ["Default"]
    assert MlflowClient(f"sqlite:///{second}").get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")
    prepare_store("http://127.0.0.1:1")  # a server: nothing to prepare, nothing contacted
    assert not (tmp_path / "http:").exists()


@pytest.mark.parametrize("module", CLIS)
@pytest.mark.parametrize("flag", ["--help", "--version"])
def test_help_and_version_answer_without_importing_torch_prefect_or_mlflow(module, flag):
    probe = (f"import sys, runpy\nsys.argv = ['x', '{flag}']\ntry:\n    runpy.run_module('{module}', "
             "run_name='__main__')\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
             "print('HEAVY', sorted(m for m in ('torch', 'prefect', 'mlflow') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "HEAVY []" in done.stdout, done.stdout[-500:]
    if flag == "--version":
        assert package_version() in done.stdout


@pytest.mark.parametrize(("module", "argv"), [
    # Without --validate-pipeline this trained into the file's output.output_path.
    ("flows.cli_train", ["--config", str(REPO / "configs/tiny_test.yaml"), "--validate-pipeline", "--output-dir", ""]),
    ("flows.cli_generate", ["--checkpoint", "", "--prompt", "a red circle"]),  # an MLflow traceback
    ("flows.cli_export", ["--checkpoint", "", "--output", "exported"]),
    ("flows.cli_compare", ["--experiment", "x", "--tracking-uri", ""])])  # read MLFLOW_TRACKING_URI's store
def test_an_empty_value_is_a_usage_error_naming_the_flag(module, argv, capsys):
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(module).main(argv)
    assert exited.value.code == 2
    flag = argv[argv.index("") - 1]
    assert f"error: argument {flag}: expected a value, got an empty one" in capsys.readouterr().err


@pytest.mark.parametrize(("module", "argv", "says"), [
    # was refused as broken YAML, naming the key: now before the config is read, naming the flag
    ("flows.cli_train", ["--config", str(REPO / "configs/tiny_test.yaml"), "--validate-pipeline",
                         "--set", "tracking.experiment_name=caf\udce9"],
     "fluxflow-train: --set is not valid UTF-8 text: tracking.experiment_name=caf\\xe9"),
    ("flows.cli_generate", ["--checkpoint", "final.pt", "--prompt", "a red circle", "--prompt", "caf\udce9 au lait"],
     "fluxflow-generate: --prompt is not valid UTF-8 text: caf\\xe9"),  # the prompt encoder's traceback, exit 1
    ("flows.cli_export", ["--checkpoint", "final.pt", "--output", "caf\udce9"],
     "fluxflow-export: --output is not valid UTF-8 text: caf\\xe9"),
    ("flows.cli_compare", ["--experiment", "x" * 50 + "caf\udce9"],  # 71 lines of MLflow's traceback, exit 1
     "fluxflow-compare: --experiment is not valid UTF-8 text: ..." + "x" * 37 + "caf\\xe9")],
    ids=["train", "generate", "export", "compare"])
def test_an_argument_that_is_not_utf8_is_one_line_naming_the_flag(module, argv, says, mlflow_store, tmp_path,
                                                                   monkeypatch, capsys):
    """A byte that is not UTF-8 in an argument (a prompt read from a Latin-1 file with `$(cat ...)`) reaches Python
    as a lone surrogate, which every later encode refuses: a traceback from the prompt encoder, MLflow's store or
    Prefect's client. Now refused before anything is read, with the text up to that byte shown as \\xNN."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(SystemExit) as exited:
        importlib.import_module(module).main(argv)
    assert exited.value.code == 2
    assert capsys.readouterr().err == says + "\n"
    assert os.listdir(work) == []  # nothing made


def test_a_command_line_byte_that_is_not_utf8_is_refused_by_the_command(tmp_path):
    """As the shell passes it: bytes, decoded by Python with surrogateescape (the hunt's repro)."""
    done = subprocess.run([sys.executable, "-m", "flows.cli_generate", "--checkpoint", "final.pt", "--prompt",
                           b"caf\xe9"], capture_output=True, cwd=tmp_path, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (done.returncode, done.stderr) == (2, b"fluxflow-generate: --prompt is not valid UTF-8 text: caf\\xe9\n")


@pytest.mark.slow  # the CLI end to end, in a process of its own
def test_a_refused_run_with_keep_server_leaves_its_server_findable(tmp_path):
    """--keep-server starts the server before the run's last checks: a run refused after it (here: the output
    directory is another run's) must still leave the server where later runs look for it, not an orphan."""
    from fluxflow.checkpoints.lock import RunLock

    raw = tiny_raw(tmp_path / "unused", [{"name": "warm", "n_epochs": 1, "train_vae": True}], dataset_size=16)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    prefect_home, out = tmp_path / "prefect-home", tmp_path / "busy"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(prefect_home))
    kept = None
    try:
        with RunLock(out):
            done = subprocess.run([sys.executable, "-m", "flows.cli_train", "--config", str(config), "--output-dir",
                                   str(out), "--quiet", "--keep-server"], cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "is in use by another run" in done.stderr
        kept = json.loads((prefect_home / KEPT_SERVER_FILE).read_text())["pid"]
        assert alive(kept) and f"kill {kept}" in done.stderr
    finally:
        if kept:
            kill_all([kept])


@pytest.mark.slow  # the CLI end to end, in a process of its own
def test_a_summary_piped_into_head_ends_quietly_with_141():
    """`fluxflow-train ... --validate-pipeline | head -1` printed a BrokenPipeError traceback (or "Exception ignored
    ... BrokenPipeError" at exit), exit 1 or 120: now nothing, and the shell's code for SIGPIPE. The other commands:
    tests/sampling/test_generate.py, test_export.py, tests/flows/test_compare.py."""
    done = run_into_closed_pipe("flows.cli_train", "--config", str(REPO / "configs/tiny_test.yaml"),
                                "--validate-pipeline")
    assert (done.returncode, done.stderr) == (141, ""), done.stderr[-2000:]


@pytest.mark.slow  # the CLI end to end, in a process of its own
def test_a_refused_run_prints_its_refusal_and_nothing_about_the_server_it_stops(tmp_path):
    """The temporary Prefect server starts before the last checks, in parallel with the imports: a run refused then
    printed "Stopping temporary server on http://127.0.0.1:PORT" before its refusal. The server is still stopped."""
    (tmp_path / "taken").write_text("a file where the output directory should be")
    raw = tiny_raw(tmp_path / "unused", [{"name": "warm", "n_epochs": 1, "train_vae": True}], dataset_size=16)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(PYTHONPATH=str(REPO), PREFECT_HOME=str(tmp_path / "prefect-home"))
    child = subprocess.Popen([sys.executable, "-m", "flows.cli_train", "--config", str(config), "--output-dir",
                              str(tmp_path / "taken"), "--quiet"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    out, err = child.communicate(timeout=120)
    assert (child.returncode, out) == (2, ""), err
    assert err == (f"❌ output directory {tmp_path / 'taken'}: cannot use it (it is a file, not a folder); choose "
                   "another with --output-dir or output.output_path\n")
    marker = f"PREFECT_HOME={tmp_path / 'prefect-home'}".encode()  # in the server's environment, as in the run's
    left = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "environ").read_bytes().split(b"\0"):
                left.append(int(proc.name))
        except OSError:  # gone meanwhile, or not ours
            pass
    assert not left, f"the temporary server {left} outlived the refused run"
