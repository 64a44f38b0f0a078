"""A pipeline step under torchrun with 2 CPU processes (gloo): ranks stay in sync, only rank 0 writes."""
import json
import subprocess
import sys
import textwrap

import pytest
from process_groups import group_alive

pytestmark = pytest.mark.slow

CONFIG = textwrap.dedent("""
    data: {img_size: 16}
    model: {vae_dim: 8, feature_maps_dim: 32, flow_depth: 1, text_embedding_dim: 32, text_encoder_depth: 1,
            feature_maps_dim_disc: 8, text_max_len: 32}
    training:
      batch_size: 4
      device: cpu
      distributed: DISTRIBUTED
      pipeline:
        datasets: {shapes: {type: shapes, size: 32, seed: 0, holdout: 4}}
        default_dataset: shapes
        steps:
          - {name: vae_gan, n_epochs: 1, max_steps: 4, train_vae: true, gan_training: true, r1_interval: 2}
    output: {output_path: OUT, log_interval: 1, checkpoint_save_interval: 2, no_samples: true}
""")  # also the step of tests/runtime/test_ray_train_step.py, with its own `distributed`
TORCHRUN = "{nproc_per_node: 2}"


def config_text(out, distributed: str = TORCHRUN) -> str:
    return CONFIG.replace("OUT", str(out)).replace("DISTRIBUTED", distributed)


def test_two_process_gloo_step_keeps_ranks_in_sync_and_rank0_alone_writes(tmp_path):
    out = tmp_path / "out"
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(config_text(out))
    code = ("from fluxflow.config import load_config; from fluxflow.train.pipeline import run_pipeline; "
            f"import json; o = run_pipeline(load_config({str(cfg)!r}).config); "
            "print('RESULT', json.dumps(o[0].to_dict()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The runner compares a parameter checksum across ranks after training and raises if they differ.
    assert "All 2 ranks hold the same weights" in proc.stdout
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["ref"]["global_step"] == 4
    # One writer: exactly one JSONL line per logged batch (a second writer would double them), one final.pt.
    records = [json.loads(line) for line in (out / "graph" / "training_metrics_vae_gan.jsonl").read_text().splitlines()]
    assert [r["batch"] for r in records if "vae_loss" in r["metrics"]] == [1, 2, 3, 4]
    evaluations = [r for r in records if "eval_psnr" in r["metrics"]]
    assert len(evaluations) == 1 and evaluations[0]["global_step"] == 4  # end-of-step evaluation, once
    assert sorted(p.name for p in (out / "checkpoints" / "vae_gan").iterdir()
                  if p.suffix in (".pt", ".json")) == ["final.pt", "latest.pt", "ref.json"]
    assert proc.stdout.count("Starting step: vae_gan") == 1  # rank 1 stays quiet


def test_a_rank_dying_at_teardown_after_the_step_leaves_the_steps_result_standing(tmp_path, monkeypatch, caplog):
    """Seen once in CI under load: rank 1 aborted (SIGABRT) after the step's last barrier, torchrun exited 1, and a
    finished, checked step was reported failed. Rank 1 is killed at that point here; the step's result stands."""
    from fluxflow.config import load_config
    from fluxflow.runtime.launch import run_step_distributed

    monkeypatch.setenv("FLUXFLOW_TEST_KILL_AT", "teardown_rank1")
    out = tmp_path / "out"
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(config_text(out))
    with caplog.at_level("WARNING", logger="fluxflow.train.step_run"):
        outcome = run_step_distributed(load_config(str(cfg)).config, "vae_gan", None, 2)
    assert outcome.result.trained and outcome.ref.global_step == 4
    assert (out / "checkpoints" / "vae_gan" / "final.pt").exists()
    assert "after every rank had finished the step" in caplog.text  # said, not hidden


def test_a_stop_request_ends_the_torchrun_process_group_at_once(tmp_path, monkeypatch, capfd):
    """Ctrl-C in the flow sets the stop request; the task waiting on torchrun must not wait for the step to end, and
    torchrun, ended by the launcher's SIGTERM, leaves no traceback of that signal under the user's "Interrupted"."""
    import threading
    import time

    from fluxflow.runtime import launch
    from fluxflow.config import load_config
    from fluxflow.runtime.stop_request import StepInterrupted, clear_stop_request, request_stop

    started: list[subprocess.Popen] = []

    class RecordedPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(launch.subprocess, "Popen", RecordedPopen)
    out = tmp_path / "out"
    cfg = tmp_path / "ddp.yaml"  # 1,000 batches: far more than the test waits for
    cfg.write_text(config_text(out).replace("size: 32", "size: 4000")
                   .replace("max_steps: 4", "max_steps: 1000"))
    config = load_config(str(cfg)).config
    raised: list[BaseException] = []

    def run():
        try:
            launch.run_step_distributed(config, "vae_gan", None, 2)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            raised.append(exc)

    clear_stop_request()
    thread = threading.Thread(target=run)
    thread.start()
    try:
        metrics = out / "graph" / "training_metrics_vae_gan.jsonl"
        deadline = time.monotonic() + 300
        while not metrics.exists() and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metrics.exists(), f"the ranks did not start training: {raised}"
        request_stop()
        thread.join(timeout=60)
        assert not thread.is_alive(), "still waiting on torchrun after the stop request"
    finally:
        clear_stop_request()
        for proc in started:
            launch._kill_group(proc)
    assert len(raised) == 1 and isinstance(raised[0], StepInterrupted), raised
    assert started[0].poll() is not None  # torchrun is gone, and with it its process group (the ranks)
    assert not group_alive(started[0].pid)
    assert not (out / "checkpoints" / "vae_gan" / "final.pt").exists()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "SignalException" not in err, err[-3000:]


@pytest.mark.parametrize("processes", [1, 2])
def test_train_step_is_the_one_dispatch_to_this_process_or_the_ranks(tmp_path, monkeypatch, processes):
    """The bare pipeline and the Prefect task both call train_step: one process trains here with the tracker; more
    train on ranks, after which `ranks_done` gets the outcome (the task records MLflow from rank 0's files)."""
    from types import SimpleNamespace

    from fluxflow.config import load_config
    from fluxflow.train import pipeline

    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(config_text(tmp_path / "out", f"{{nproc_per_node: {processes}}}"))
    config = load_config(str(cfg)).config
    outcome, calls = SimpleNamespace(result=SimpleNamespace(trained=True)), []
    monkeypatch.setattr(pipeline, "run_step", lambda *a, tracker: calls.append(("here", tracker)) or outcome)
    monkeypatch.setattr(pipeline, "run_step_on_processes", lambda *a: calls.append(("ranks",)) or outcome)

    tracker = object()
    assert pipeline.train_step(config, "vae_gan", None, tracker, ranks_done=lambda o: calls.append(("done", o)))
    assert calls == ([("here", tracker)] if processes == 1 else [("ranks",), ("done", outcome)])


def test_a_killed_launcher_takes_torchrun_and_its_ranks_with_it_and_a_rerun_is_not_blocked(tmp_path):
    """Found by a new-user hunt: `kill -9` of `fluxflow-train` left torchrun and both ranks training (each rank in a
    session of its own), holding the step's directory, and the same command run again failed on it ("in use by
    another run", retried). The launcher here is the bare pipeline, in a session of its own, killed as a group."""
    import contextlib
    import os
    import signal
    import time
    from pathlib import Path

    from process_groups import alive, child_pids, kill_all

    from fluxflow.config import load_config
    from fluxflow.runtime.launch import run_step_distributed

    out = tmp_path / "out"
    cfg = tmp_path / "ddp.yaml"  # 1,000 batches: far more than the test waits for
    cfg.write_text(config_text(out).replace("size: 32", "size: 4000").replace("max_steps: 4", "max_steps: 1000"))
    code = ("from fluxflow.config import load_config; from fluxflow.train.pipeline import run_pipeline; "
            f"run_pipeline(load_config({str(cfg)!r}).config)")
    log = tmp_path / "launcher.log"
    with open(log, "w") as sink:
        launcher = subprocess.Popen([sys.executable, "-c", code], stdout=sink, stderr=subprocess.STDOUT,
                                    start_new_session=True)
    group: list[int] = []  # torchrun, then its ranks
    try:
        metrics = out / "graph" / "training_metrics_vae_gan.jsonl"
        deadline = time.monotonic() + 120
        while not metrics.exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metrics.exists(), f"the ranks did not start training:\n{log.read_text()[-3000:]}"
        group = child_pids(launcher.pid)
        assert len(group) == 1, group
        group += child_pids(group[0])
        assert len(group) == 3, f"torchrun {group[0]}'s ranks: {group[1:]}"
        scratch = Path(Path(f"/proc/{group[0]}/cmdline").read_bytes().split(b"\0")[-2].decode()).parent
        assert scratch.name.startswith("fluxflow-ddp-"), scratch  # the folder of torchrun's files (--error's)
        os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 10
        while any(map(alive, group)) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = [pid for pid in group if alive(pid)]
        assert not left, f"left running after the launcher's kill -9: {left} of torchrun and ranks {group}"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait()
        kill_all(group)
    # The same output again (4 batches, another step key): trained, not refused, and the folder the killed launcher
    # could not remove is gone.
    cfg.write_text(config_text(out))
    outcome = run_step_distributed(load_config(str(cfg)).config, "vae_gan", None, 2)
    assert outcome.result.trained and outcome.ref.global_step == 4
    assert not scratch.exists()


def test_a_step_directory_another_run_holds_is_refused_in_one_line_before_torchrun_starts(tmp_path, monkeypatch):
    """The rerun after the orphans above failed with 7 tracebacks of the ranks and torchrun, then "torchrun with 2
    processes exited with code 1", a RuntimeError the flow retried. The launcher asks for the step's directory first:
    the one-line, non-retryable refusal of a step on one process (exit 2 from fluxflow-train), and no torchrun."""
    from fluxflow.checkpoints.lock import RunLock, RunLockedError
    from fluxflow.config import load_config
    from fluxflow.errors import is_retryable
    from fluxflow.runtime import launch

    out = tmp_path / "out"
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(config_text(out))
    monkeypatch.setattr(launch, "start_group", lambda cmd: pytest.fail("torchrun started on a held directory"))
    with RunLock(out / "checkpoints" / "vae_gan"), pytest.raises(RunLockedError, match="in use by another run") as e:
        launch.run_step_distributed(load_config(str(cfg)).config, "vae_gan", None, 2)
    assert not is_retryable(e.value)


def test_rank_0_refused_the_step_directory_is_that_refusal_not_torchruns_exit_code(tmp_path, monkeypatch):
    """Another run can take the directory between the launcher's check and rank 0's start: rank 0's RunLockedError
    reaches the launcher (through --error) as itself, not as torchrun's exit code."""
    import contextlib

    from fluxflow.checkpoints.lock import RunLock, RunLockedError
    from fluxflow.config import load_config
    from fluxflow.errors import is_retryable
    from fluxflow.runtime import launch

    out = tmp_path / "out"
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(config_text(out))
    # The check found it free (raising=False: a launcher without the check has no RunLock to replace)
    monkeypatch.setattr(launch, "RunLock", lambda directory: contextlib.nullcontext(), raising=False)
    with RunLock(out / "checkpoints" / "vae_gan"), pytest.raises(RunLockedError, match="in use by another run") as e:
        launch.run_step_distributed(load_config(str(cfg)).config, "vae_gan", None, 2)
    assert not is_retryable(e.value)
    assert "torchrun" not in str(e.value)
