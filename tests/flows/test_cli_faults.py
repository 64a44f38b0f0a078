"""Faults the user must fix, through the real command lines in child processes: `fluxflow-train` on the session's
Prefect test API and `fluxflow-generate`. Each ends in exit code 2 and one line (❌ for fluxflow-train) that names the
file and says what to do: no traceback, no retry, and a pickle's payload never runs. And one the same command gets
past by itself: a torn checkpoint with no good one before it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers_tiny import tiny_raw
from prefect_ui_server import prefect_under_api
from train_cli import child_env, kill_group_when, output_of_success, running_train, start_train

from fluxflow.checkpoints.latest import previous_of

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
STEPS = [{"name": "warm", "n_epochs": 2, "max_steps": 4, "train_vae": True}]


class RunsCode:
    """A `__reduce__` payload: unpickling it creates a directory (the proof that code ran)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def payload_checkpoint(tmp_path: Path) -> tuple[Path, Path]:
    marker, path = tmp_path / "payload-ran", tmp_path / "evil.pt"
    torch.save({"models": {}, "payload": RunsCode(marker)}, path)
    return path, marker


def run_cli(module: str, *args: str, cwd: Path, prefect_api_url: str | None = None) -> tuple[int, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    if prefect_api_url:
        env["PREFECT_API_URL"] = prefect_api_url
    done = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    return done.returncode, done.stdout + done.stderr


def train_cli(raw: dict, tmp_path: Path) -> tuple[int, str]:
    from prefect.settings import PREFECT_API_URL

    config_file = tmp_path / "config.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    return run_cli("flows.cli_train", "--config", str(config_file), "--quiet", cwd=tmp_path,
                   prefect_api_url=PREFECT_API_URL.value())


def the_one_line(output: str) -> str:
    """fluxflow-train's own line about the failure; there must be exactly one."""
    lines = [line for line in output.splitlines() if line.startswith("❌")]
    assert len(lines) == 1, output
    return lines[0]


def assert_no_traceback_and_no_retry(output: str) -> None:
    assert "Traceback" not in output, output
    assert "Retry 1/" not in output, output  # attempted once


def test_train_refuses_a_model_checkpoint_that_would_run_code(tmp_path, prefect_api, mlflow_store):
    evil, marker = payload_checkpoint(tmp_path)
    raw = tiny_raw(tmp_path / "out", STEPS, no_samples=True, model_checkpoint=str(evil))
    raw["training"]["pipeline"]["retries"] = 2
    code, output = train_cli(raw, tmp_path)
    assert code == 2, output
    line = the_one_line(output)
    assert line.startswith(f"❌ checkpoint {evil} refused: contains Python objects that would run code when loaded")
    assert "corrupt" not in line and "weights_only" not in output
    assert_no_traceback_and_no_retry(output)
    assert not marker.exists()


@pytest.mark.parametrize("captions, holdout, field, says", [
    (None, 0, "path", "image folder {folder} does not exist"),
    ("a.png\tone\nb.png\ttwo\n", 2, "holdout",
     "folder {folder}: holdout=2 leaves no training images (2 entries in captions.txt); lower holdout or add images"),
    # A spreadsheet's export: was "holdout=2 leaves no training images (0 entries ...)", or with no hold-out a failed
    # step "0 items, fewer than one batch" after the servers had started.
    ("file_name,text\na.png,one\nb.png,two\n", 2, "captions_file",
     "captions file {folder}/captions.txt: none of its 3 lines is 'filename<TAB>caption' (first: 'file_name,text'); "
     "separate each filename from its caption by a tab (CSV, JSON Lines and space-separated files are not read)"),
])
def test_train_with_a_missing_or_too_small_data_folder_exits_2_at_start(tmp_path, captions, holdout, field, says):
    folder = tmp_path / "photos"
    if captions is not None:
        folder.mkdir()
        (folder / "captions.txt").write_text(captions)
        for name in ("a.png", "b.png"):  # the listed images are there: what is wrong is the captions file or holdout
            (folder / name).write_bytes(b"")
    raw = tiny_raw(tmp_path / "out", STEPS, no_samples=True)
    raw["training"]["pipeline"]["datasets"] = {"photos": {"type": "folder", "path": str(folder),
                                                          "captions_file": "captions.txt", "holdout": holdout}}
    raw["training"]["pipeline"]["default_dataset"] = "photos"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    code, output = run_cli("flows.cli_train", "--config", str(tmp_path / "config.yaml"), "--quiet", cwd=tmp_path)
    assert code == 2, output
    assert the_one_line(output) == f"❌ 1 problem in {tmp_path / 'config.yaml'}:"
    assert f"  - training.pipeline.datasets.photos.{field}: {says.format(folder=folder)}" in output.splitlines()
    assert_no_traceback_and_no_retry(output)
    assert "Flow run" not in output  # refused before the flow started


def test_train_into_an_output_directory_it_cannot_make_exits_2_at_start(tmp_path):
    (tmp_path / "taken").write_text("a file where the output directory should be")
    raw = tiny_raw(tmp_path / "taken", STEPS, no_samples=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    code, output = run_cli("flows.cli_train", "--config", str(tmp_path / "config.yaml"), "--quiet", cwd=tmp_path)
    assert code == 2, output
    assert the_one_line(output) == (f"❌ output directory {tmp_path / 'taken'}: cannot use it (it is a file, not a "
                                    "folder); choose another with --output-dir or output.output_path")
    assert_no_traceback_and_no_retry(output)
    assert "Flow run" not in output  # refused before the flow started


def test_train_on_a_prefect_server_that_does_not_answer_exits_2_at_start(tmp_path):
    from mlflow_server import free_port

    api = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_raw(tmp_path / "out", STEPS, no_samples=True)))
    code, output = run_cli("flows.cli_train", "--config", str(tmp_path / "config.yaml"), "--quiet", cwd=tmp_path,
                           prefect_api_url=api)
    assert code == 2, output
    assert the_one_line(output).startswith(f"❌ the Prefect server at {api} (PREFECT_API_URL) does not answer (")
    assert_no_traceback_and_no_retry(output)
    assert "Flow run" not in output  # refused before the flow started


def test_train_with_a_prefect_api_url_without_api_exits_2_in_one_line_saying_so(tmp_path):
    """The UI's address copied as PREFECT_API_URL: the server answers, but not as an API (404 at /health); before,
    Prefect's client failed on /admin/version with a 40-line traceback and exit 1."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_raw(tmp_path / "out", STEPS, no_samples=True)))
    with prefect_under_api() as root:
        code, output = run_cli("flows.cli_train", "--config", str(tmp_path / "config.yaml"), "--quiet", cwd=tmp_path,
                               prefect_api_url=root)
    assert code == 2, output
    assert the_one_line(output) == (f"❌ no Prefect API at {root} (PREFECT_API_URL): its /health answers 404 Not "
                                    "Found; PREFECT_API_URL should be the server's API address, which ends in /api, "
                                    f"e.g. {root}/api")
    assert_no_traceback_and_no_retry(output)
    assert "Flow run" not in output  # refused before the flow started


def test_generate_refuses_a_checkpoint_that_would_run_code(tmp_path):
    evil, marker = payload_checkpoint(tmp_path)
    code, output = run_cli("flows.cli_generate", "--checkpoint", str(evil), "--prompt", "a red circle",
                           "--device", "cpu", cwd=tmp_path)
    assert code == 2, output
    assert output.strip().splitlines() == [
        f"fluxflow-generate: checkpoint {evil} refused: contains Python objects that would run code when loaded "
        "(posix.mkdir); checkpoints are loaded as plain data only (tensors, dicts, lists, numbers, strings): use a "
        "checkpoint written by fluxflow, or one that holds only tensors in plain dicts"]
    assert not marker.exists()


def test_a_kill_after_the_first_checkpoint_then_a_torn_one_restarts_the_step_from_its_parent(
        tmp_path, prefect_api, mlflow_store):
    """Killed right after step `more`'s first checkpoint, whose latest.pt is then torn (and latest.prev.pt too, when
    a second checkpoint came before the kill): the same command sets them aside and trains `more` again from
    `warm`'s final.pt, as after a kill before the first checkpoint."""
    from mlflow.tracking import MlflowClient
    from prefect.settings import PREFECT_API_URL

    out, n_batches, every = tmp_path / "out", 200, 40
    steps = [{"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True},
             {"name": "more", "n_epochs": 1, "train_vae": True}]
    raw = tiny_raw(out, steps, dataset_size=4 * n_batches, checkpoint_save_interval=every, no_samples=True)
    raw["tracking"] = {"experiment_name": "torn"}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = child_env(PREFECT_API_URL=PREFECT_API_URL.value())
    latest = out / "checkpoints" / "more" / "latest.pt"

    kill_group_when(start_train(config, env, tmp_path / "run1.log"), latest.exists, "more's first checkpoint")
    torn = [path for path in (latest, previous_of(latest)) if path.exists()]
    for path in torn:
        path.write_bytes(path.read_bytes()[:200])
    evidence = {path.name: path.read_bytes() for path in torn}

    with running_train(config, env, tmp_path / "run2.log") as child:
        output = output_of_success(child, tmp_path / "run2.log", timeout=240)  # exit 0
    assert (out / "checkpoints" / "warm" / "final.pt").exists() and (out / "checkpoints" / "more" / "final.pt").exists()
    [kept] = (latest.parent / "corrupt").iterdir()
    assert {path.name: path.read_bytes() for path in kept.iterdir()} == evidence
    [line] = [line for line in output.splitlines() if "No checkpoint of this step can be used" in line]
    assert line.startswith(f"No checkpoint of this step can be used (checkpoint {latest} is corrupt, truncated"), line
    assert line.endswith(f"moved to {kept} as evidence. Lost: the batches trained since the step's start, which it "
                         "trains again from its input")
    assert "Starting step: more, epoch 1, batch 0" in output and "Resuming from checkpoint" not in output
    assert "Skipping step warm: already complete" in output  # restarted from its parent's final.pt

    client = MlflowClient()  # one FINISHED run for the step, no point logged twice, as after any kill
    experiment = client.get_experiment_by_name("torn")
    runs = client.search_runs([experiment.experiment_id], "tags.`fluxflow.kind` = 'step'")
    [run] = [run for run in runs if run.info.run_name == "more"]
    assert run.info.status == "FINISHED"
    points = [m.step for m in client.get_metric_history(run.info.run_id, "vae_loss")]
    assert len(points) == len(set(points)) == n_batches
