"""End to end, as an operator serves the champion: a real `mlflow server` on a free loopback port (sqlite store,
proxied artifacts), a pipeline run that registers its flow step through it, then `mlflow models serve -m
models:/<name>@champion --env-manager local` answering a prompt over REST with an image: the same pixels as
`fluxflow-generate --checkpoint` on the same seed (on a CPU; a GPU machine serves on CUDA).

Both servers run in sessions of their own and are stopped by process group in `finally`. About 1 minute on 2 cores.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers_tiny import tiny_raw
from PIL import Image
from process_groups import group_alive
from test_e2e_deployment import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

BIN = Path(sys.executable).parent  # mlflow and uvicorn of this environment (`models serve` runs `uvicorn` by name)
MODEL = "served"
GENERATE = ["--prompt", "a red circle", "--seed", "3", "--steps", "3", "--format", "png", "--device", "cpu", "--output"]


def start(args: list[str], env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_until_answers(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[:3]} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    raise AssertionError(f"{url} did not answer within {timeout}s:\n{log.read_text()[-3000:]}")


def stop(procs: list[subprocess.Popen]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            if group_alive(proc.pid):
                os.killpg(proc.pid, sig)
        deadline = time.monotonic() + 10
        while any(group_alive(p.pid) for p in procs) and time.monotonic() < deadline:
            time.sleep(0.2)
    for proc in procs:
        proc.wait(timeout=10)


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def test_the_champion_is_served_over_rest_by_name_and_answers_a_prompt_with_its_image(tmp_path, monkeypatch,
                                                                                       prefect_api, mlflow_template):
    import torch

    from flows import cli_generate
    from flows.pipeline_flow import pipeline_flow
    from flows.pyfunc_model import decode_image

    shutil.copyfile(mlflow_template, tmp_path / "mlflow.db")
    mlflow_port, serve_port = free_port(), free_port()
    tracking = f"http://127.0.0.1:{mlflow_port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_TRACKING_URI": tracking,
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    procs = []
    try:
        procs.append(start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                            "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                            "--artifacts-destination", str(tmp_path / "artifacts")],
                           env, tmp_path, tmp_path / "mlflow-server.log"))
        wait_until_answers(f"{tracking}/health", procs[0], tmp_path / "mlflow-server.log", 120)

        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
        monkeypatch.chdir(tmp_path)
        scratch = tmp_path / "tmp"  # this process's temporary files: where copies of a model would be left
        scratch.mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        raw = tiny_raw(tmp_path / "out", [{"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True},
                                          {"name": "flow", "n_epochs": 1, "max_steps": 3, "train_diff_full": True}],
                       dataset_size=16, no_samples=True)
        raw["tracking"] = {"experiment_name": MODEL}
        state = pipeline_flow(raw, return_state=True)
        assert state.is_completed(), state.message
        checkpoint = state.result()[-1]["ref"]["uri"]

        procs.append(start([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
                            "--env-manager", "local", "--host", "127.0.0.1", "--port", str(serve_port)],
                           env, tmp_path, tmp_path / "models-serve.log"))
        served = f"http://127.0.0.1:{serve_port}"
        wait_until_answers(f"{served}/ping", procs[1], tmp_path / "models-serve.log", 180)
        answer = post_json(f"{served}/invocations", {"dataframe_split": {"columns": ["prompt"],
                                                                         "data": [["a red circle"]]},
                                                     "params": {"seed": 3, "steps": 3}})
        # The same version by name through the tracking server: downloaded, its sha256 checked.
        assert cli_generate.main(["--model", f"models:/{MODEL}@champion", *GENERATE, str(tmp_path / "by-name")]) == 0
        # Promotion's evaluation and generate each read a copy of the model, and remove it.
        assert [p for p in scratch.rglob("*") if p.name == "MLmodel" or p.suffix == ".pt"] == []
    finally:
        stop(procs)
    assert not any(group_alive(p.pid) for p in procs)

    [prediction] = answer["predictions"]
    assert (prediction["prompt"], prediction["seed"]) == ("a red circle", 3)
    image = decode_image(prediction["image"])
    assert image.format == "PNG" and image.size == (16, 16)
    assert cli_generate.main(["--checkpoint", checkpoint, *GENERATE, str(tmp_path / "by-file")]) == 0
    [by_file], [by_name] = (tmp_path / "by-file").iterdir(), (tmp_path / "by-name").iterdir()
    assert np.array_equal(np.asarray(Image.open(by_name)), np.asarray(Image.open(by_file)))
    if not torch.cuda.is_available():  # the served model runs where `auto` puts it
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(by_file)))
