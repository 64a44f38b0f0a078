"""The Prefect flow end to end on the real runner: tasks named after steps, MLflow runs, branches, retries, re-runs.

Tiny pipelines (16x16 images, 2-3 batches per epoch) on the session's temporary Prefect API and a temporary MLflow
sqlite store. Each flow run takes a few seconds, most of it Prefect and MLflow bookkeeping.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import shlex
import shutil
from pathlib import Path

import pytest
from flow_fixtures import gpu_concurrency_limit, gpu_slot_held_elsewhere, run_log_lines
from helpers_tiny import tiny_raw
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

VAE = {"n_epochs": 1, "max_steps": 2, "train_vae": True}


@pytest.fixture(autouse=True)
def _prefect(prefect_api):
    """Every test here talks to the session's Prefect test API."""


def config(tmp_path: Path, experiment: str, steps: list[dict], retries: int = 1, **output) -> dict:
    raw = tiny_raw(tmp_path / "out", steps, dataset_size=16, **output)
    raw["training"]["pipeline"]["retries"] = retries
    raw["tracking"] = {"experiment_name": experiment}
    return raw


def run_flow(raw: dict):
    from flows.pipeline_flow import pipeline_flow

    state = pipeline_flow(raw, return_state=True)
    return state, state.state_details.flow_run_id


def task_runs(flow_run_id) -> dict:
    """Task runs of one flow run, by name."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run for run in runs}


def artifact_keys(flow_run_id) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
            any_=[flow_run_id])))
    return {artifact.key for artifact in found}


def mlflow_runs(experiment: str) -> tuple[list, list]:
    """(pipeline runs, step runs) of an experiment."""
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    return ([r for r in runs if r.data.tags.get("fluxflow.kind") == "pipeline"],
            [r for r in runs if r.data.tags.get("fluxflow.kind") == "step"])


@pytest.fixture(scope="module")
def chain(tmp_path_factory, mlflow_store_module):
    """A 3-step pipeline (VAE warm-up -> VAE+GAN -> flow), run once for the tests that look at its records."""
    tmp = tmp_path_factory.mktemp("chain")
    raw = config(tmp, "chain", [
        {"name": "vae_warmup", **VAE},
        {"name": "vae_gan", **VAE, "gan_training": True},
        {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff": True},
    ])
    state, flow_run_id = run_flow(raw)
    assert state.is_completed(), state.message
    return raw, state.result(), flow_run_id


def test_three_steps_are_three_tasks_named_after_them_and_three_nested_mlflow_runs(chain):
    raw, outcomes, flow_run_id = chain
    tasks = task_runs(flow_run_id)
    # The leaf flow step's checkpoint is registered and promoted after the steps (flows/promotion.py).
    assert sorted(tasks) == ["flow", "promote chain", "register flow", "vae_gan", "vae_warmup"]
    assert all(t.state.is_completed() for t in tasks.values())
    assert [o["result"]["step_name"] for o in outcomes] == ["vae_warmup", "vae_gan", "flow"]
    assert [o["ref"]["global_step"] for o in outcomes] == [2, 4, 6]  # each step starts where its parent ended

    pipelines, steps = mlflow_runs("chain")
    assert len(pipelines) == 1 and len(steps) == 3
    parent = pipelines[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"] == str(flow_run_id)
    assert parent.data.tags["prefect.flow_run_url"].endswith(f"/runs/flow-run/{flow_run_id}")
    assert len(parent.data.tags["fluxflow.config_hash"]) == 16
    client = MlflowClient()
    for run in steps:
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.info.status == "FINISHED" and run.data.tags["fluxflow.outcome"] == "epochs_done"
        assert run.data.params["name"] == run.info.run_name
        loss = "flow_loss" if run.info.run_name == "flow" else "vae_loss"
        assert [m.step for m in client.get_metric_history(run.info.run_id, loss)] in ([1, 2], [3, 4], [5, 6])
        # The end-of-step evaluation on the held-out split, at the step's last global step and in the final metrics.
        evaluation = ({"eval_fd_ours_cfg", "eval_fd_ours_nocfg", "eval_adherence_color", "eval_adherence_shape"}
                      if run.info.run_name == "flow" else {"eval_psnr", "eval_ssim"})
        assert evaluation <= set(run.data.metrics)
        assert {"final/" + name for name in evaluation} <= set(run.data.metrics)
        samples = client.list_artifacts(run.info.run_id, "samples")
        assert samples and all(a.path.endswith(".webp") for a in samples)
        ref = json.loads(Path(client.download_artifacts(run.info.run_id, "checkpoint_ref.json")).read_text())
        assert ref["ref"]["uri"].endswith(f"checkpoints/{run.info.run_name}/final.pt")

    keys = artifact_keys(flow_run_id)
    assert {"out-vae-warmup-mlflow", "out-vae-warmup-result", "out-flow-result", "out-summary",
            "out-progress"} <= keys
    # The step's Prefect table carries its evaluation next to its losses and checkpoint.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["out-flow-result"])),
                                        limit=1)
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    fields = {row["field"] for row in rows}
    assert {"flow_loss", "eval_fd_ours_cfg", "eval_adherence_shape", "checkpoint", "outcome"} <= fields


def test_rerunning_a_finished_pipeline_trains_nothing_and_opens_no_step_runs(chain, capsys):
    raw, first, _ = chain
    before = {r.info.run_id for r in mlflow_runs("chain")[1]}
    capsys.readouterr()
    state, flow_run_id = run_flow(raw)
    assert "Skipping steps: vae_warmup, vae_gan, flow" in capsys.readouterr().out
    assert state.is_completed()
    outcomes = state.result()
    assert [o["result"]["trained"] for o in outcomes] == [False, False, False]
    assert [o["ref"] for o in outcomes] == [o["ref"] for o in first]
    assert {r.info.run_id for r in mlflow_runs("chain")[1]} == before
    assert [o["run_id"] for o in outcomes] == [o["run_id"] for o in first]  # linked to the runs that trained them
    assert sorted(task_runs(flow_run_id)) == ["flow", "promote chain", "register flow", "vae_gan", "vae_warmup"]


def test_branches_start_from_the_same_parent_checkpoint_and_compare_reports_both(
        tmp_path, mlflow_store_module, run_step_calls, capsys):
    from flows import cli_compare

    received, ran = run_step_calls
    raw = config(tmp_path, "branches", [
        {"name": "warm", **VAE},
        {"name": "spade_off", **VAE, "gan_training": True},
        {"name": "spade_on", **VAE, "gan_training": True, "train_spade": True, "after": "warm"},
    ])
    with gpu_concurrency_limit(1):  # one GPU: the two branches must take turns
        state, flow_run_id = run_flow(raw)
    assert state.is_completed(), state.message
    assert sorted(task_runs(flow_run_id)) == ["spade_off", "spade_on", "warm"]
    # The training bodies took turns (the API's task-run timestamps come from events and may lag, so the test
    # measures the bodies themselves).
    first, second = sorted((ran["spade_off"], ran["spade_on"]))
    assert first[1] <= second[0]
    warm = next(o["ref"] for o in state.result() if o["result"]["step_name"] == "warm")
    assert received["warm"] is None
    assert received["spade_off"].sha256 == received["spade_on"].sha256 == warm["sha256"]
    pipelines, _ = mlflow_runs("branches")
    assert pipelines[0].data.tags["fluxflow.branches"] == "spade_off,spade_on"

    capsys.readouterr()
    assert cli_compare.main(["--experiment", "branches", "--output", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    assert "spade_off" in printed and "spade_on" in printed and "warm" not in printed.split("\n")[0]
    rows = list(csv.reader(open(tmp_path / "cmp" / "compare_branches.csv")))
    assert rows[0] == ["", "spade_off", "spade_on"]
    by_field = {row[0]: row[1:] for row in rows}
    assert by_field["config: train_spade"] == ["False", "True"]
    assert len(by_field["metric: vae_loss"]) == 2
    from PIL import Image

    assert Image.open(tmp_path / "cmp" / "compare_branches.png").size[0] > 100


def test_a_step_waiting_for_the_gpu_slot_says_once_who_holds_it(tmp_path, mlflow_store_module):
    """After a `kill -9`, the killed run's `gpu` slot stays taken until its lease runs out (about a minute): the next
    run's step waited that long with nothing said. Now its task run's log says, once, what it waits for and who holds
    it; the step trains once the slot is free."""
    raw = config(tmp_path, "waits-for-the-gpu", [{"name": "warm", **VAE}], no_samples=True)
    with gpu_concurrency_limit(1), gpu_slot_held_elsewhere(release_after_s=8) as holder, \
            run_log_lines("prefect.task_runs") as said:
        state, _ = run_flow(raw)
    assert state.is_completed(), state.message
    waits = [line for line in said if "waits for the `gpu` concurrency slot" in line]
    assert len(waits) == 1, said
    assert waits[0].startswith("Step warm waits") and str(holder) in waits[0] and "kill -9" in waits[0], waits


class FailOnce:
    """Wraps the step's tracker: raises once, at the n-th metrics call of one step, then behaves."""

    raised = False

    def __init__(self, inner, step: str, at_call: int):
        self.inner, self.step, self.at_call, self.calls = inner, step, at_call, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def log_metrics(self, metrics, progress):
        if progress.step_name == self.step:
            self.calls += 1
            if self.calls == self.at_call and not FailOnce.raised:
                FailOnce.raised = True
                raise RuntimeError("injected failure")
        self.inner.log_metrics(metrics, progress)


def fail_once(monkeypatch, step: str, at_call: int) -> None:
    """Every step's tracker wrapped in FailOnce: `step` fails once, at its `at_call`-th metrics call."""
    from flows import step_task

    real_make_tracker = step_task.make_tracker

    def failing_make_tracker(cfg, target, node=None, step_name=None):
        tracker, mlflow_tracker = real_make_tracker(cfg, target, node, step_name)
        return FailOnce(tracker, step, at_call), mlflow_tracker

    monkeypatch.setattr(step_task, "make_tracker", failing_make_tracker)
    FailOnce.raised = False


def test_a_failed_task_is_retried_and_resumes_mid_step_in_the_same_mlflow_run(tmp_path, mlflow_store_module,
                                                                                 monkeypatch):
    fail_once(monkeypatch, "gan", at_call=5)
    # gan: 2 epochs x 3 batches, a checkpoint after every batch; the 5th batch's log raises, after the checkpoint
    # of batch 4 (epoch 2, batch 1).
    raw = config(tmp_path, "retry", [
        {"name": "warm", "n_epochs": 1, "max_steps": 3, "train_vae": True},
        {"name": "gan", "n_epochs": 2, "max_steps": 3, "train_vae": True, "gan_training": True},
    ], retries=1, no_samples=True)
    state, flow_run_id = run_flow(raw)
    assert FailOnce.raised
    assert state.is_completed(), state.message
    gan = state.result()[1]
    assert gan["result"]["resumed_from"] == [1, 1]
    assert gan["ref"]["global_step"] == 3 + 6  # the same bookkeeping as a run that never failed
    assert task_runs(flow_run_id)["gan"].run_count == 2

    _, steps = mlflow_runs("retry")
    gan_runs = [r for r in steps if r.info.run_name == "gan"]
    assert len(gan_runs) == 1 and gan_runs[0].info.status == "FINISHED"
    history = MlflowClient().get_metric_history(gan_runs[0].info.run_id, "vae_loss")
    assert sorted(m.step for m in history) == [4, 5, 6, 7, 8, 9]  # continues at 8: no restart, no batch twice


def test_a_failed_step_is_in_the_summary_and_the_printed_lines_with_the_steps_that_finished_and_did_not_run(
        tmp_path, mlflow_store_module, monkeypatch, capsys):
    """The Prefect summary listed the failed step's children as "not run: a failed" and had no row for `a` itself
    (with two branches it looked like a pipeline without that step), and `fluxflow-train` printed only
    `Pipeline failed: ...`, none of the per-step lines of a run that finished."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from flows.cli_flow_run import run_pipeline_flow
    from fluxflow.config.run_config import resolve_run_config

    fail_once(monkeypatch, "a", at_call=1)
    raw = config(tmp_path, "failed-tree", [
        {"name": "warm", **VAE}, {"name": "a", **VAE}, {"name": "b", **VAE, "after": "warm"},
        {"name": "a2", **VAE, "after": "a"},
    ], retries=0, no_samples=True)
    raw["output"]["output_path"] = str(tmp_path / "failed-tree")  # its own summary's key in the session's API
    assert run_pipeline_flow(resolve_run_config(raw).config) == 1
    printed = capsys.readouterr().out.splitlines()

    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["failed-tree-summary"])), limit=1)
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert {row["step"]: row["outcome"] for row in rows} == {
        "warm": "epochs_done", "b": "epochs_done", "a": "failed: injected failure", "a2": "not run: a failed"}
    end = next(i for i, line in enumerate(printed) if line.startswith("Pipeline failed: "))
    steps = {line.split(":")[0].strip(): line for line in printed[end + 1:end + 5]}
    assert sorted(steps) == ["a", "a2", "b", "warm"], printed
    assert steps["b"].startswith("  b: epochs_done, 1 epoch, ") and steps["b"].endswith("checkpoints/b/final.pt")
    assert steps["a"] == "  a: failed: injected failure" and steps["a2"] == "  a2: not run: a failed"


def test_a_missed_threshold_with_on_missed_fail_fails_the_flow_and_stops_its_subtree(tmp_path, mlflow_store_module,
                                                                                     capsys):
    from flows.cli_flow_run import run_pipeline_flow
    from fluxflow.config.run_config import resolve_run_config

    raw = config(tmp_path, "missed", [
        {"name": "warm", **VAE, "on_missed": "fail",
         "transition_on": {"mode": "loss_threshold", "metric": "vae_loss", "threshold": 1e-9, "max_epochs": 1}},
        {"name": "after_warm", **VAE},
    ], no_samples=True)
    logger = logging.getLogger("prefect.flow_runs")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        assert run_pipeline_flow(resolve_run_config(raw).config) == 1
    finally:
        logger.removeHandler(handler)
    printed = capsys.readouterr().out
    assert "Step warm: vae_loss did not fall below 1e-09 within 1 epoch " in printed
    # An outcome the config asked for: one line, not a traceback of Prefect's engine (was printed on every run).
    about_it = [r for r in records if "did not fall below" in r.getMessage()]
    assert about_it and not any(r.exc_info for r in about_it)
    out = Path(raw["output"]["output_path"])
    assert f"Checkpoints: {out}/checkpoints" in printed and "Samples:" not in printed  # no_samples: none made
    # The printed commands run as printed, from this directory, without activating the venv.
    mlflow_cmd = re.search(r"MLflow UI:   (\S+) ui --host 127.0.0.1 --backend-store-uri sqlite:///", printed).group(1)
    assert shutil.which(mlflow_cmd) or os.access(mlflow_cmd, os.X_OK), mlflow_cmd
    assert "Prefect UI:  http" in printed  # the test harness's API has a UI URL; without one: `prefect server start`
    assert (out / "checkpoints" / "warm" / "final.pt").exists()
    assert not (out / "checkpoints" / "after_warm").exists()
    pipelines, steps = mlflow_runs("missed")
    assert pipelines[0].info.status == "FAILED"
    assert [r.data.tags["fluxflow.outcome"] for r in steps] == ["max_epochs_reached"]


def test_the_printed_mlflow_ui_command_quotes_a_store_path_with_a_space(tmp_path, capsys, monkeypatch):
    from flows.cli_flow_run import print_where_to_look
    from flows.mlflow_runs import experiment_id_for, open_pipeline_run, output_dir_of
    from fluxflow.config.run_config import resolve_run_config

    (tmp_path / "my store").mkdir()  # e.g. the default ./mlflow.db in a project folder whose name has a space
    uri = f"sqlite:///{tmp_path / 'my store' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    resolved = resolve_run_config(config(tmp_path, "quoted", [{"name": "warm", **VAE}])).config
    client = MlflowClient(uri)
    open_pipeline_run(client, experiment_id_for(client, "quoted"), output_dir_of(resolved), {})
    print_where_to_look(resolved, "00000000-0000-0000-0000-000000000000")
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("MLflow UI:")]
    words = shlex.split(line.removeprefix("MLflow UI:"))
    assert words[1:5] == ["ui", "--host", "127.0.0.1", "--backend-store-uri"]
    assert words[5] == uri  # unquoted, the shell split it at the space


def test_after_a_run_on_a_kept_server_the_prefect_line_names_that_server(tmp_path, capsys, monkeypatch):
    """After `fluxflow-train --keep-server` the last line said only "prefect server start ... then open
    http://127.0.0.1:4200/runs/flow-run/ID", although the run's records were on the kept server, on another port."""
    from flows import prefect_server
    from flows.cli_flow_run import print_where_to_look
    from fluxflow.config.run_config import resolve_run_config

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    resolved = resolve_run_config(config(tmp_path, "kept", [{"name": "warm", **VAE}])).config
    kept = prefect_server.TemporaryServer(keep=True)
    kept.port, kept.pid = 56325, 4321
    monkeypatch.setattr(prefect_server, "_started", kept)
    run_id = "00000000-0000-0000-0000-000000000001"
    print_where_to_look(resolved, run_id, kept.api_url)
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("Prefect")]
    assert line.startswith(f"Prefect:     http://127.0.0.1:56325/api/flow_runs/{run_id} on the kept server (pid 4321; "
                           "an API without UI; for the UI: "), line


def test_a_second_run_on_a_busy_output_directory_fails_at_once(tmp_path, mlflow_store_module, capsys):
    from flows.cli_flow_run import run_pipeline_flow
    from fluxflow.config.run_config import resolve_run_config
    from fluxflow.checkpoints.lock import RunLock

    raw = config(tmp_path, "busy", [{"name": "warm", **VAE}])
    with RunLock(raw["output"]["output_path"]):  # 2: for the user to settle (as fluxflow-train's own check says)
        assert run_pipeline_flow(resolve_run_config(raw).config) == 2
    printed = capsys.readouterr()
    last = printed.err.rstrip().splitlines()[-1]
    assert last.startswith("❌ ") and "is in use by another run" in last  # fluxflow-train's line: the cause alone
    assert "Traceback" not in printed.err
    # Two runs started in the same seconds: the loser printed "Pipeline failed: ...", then where to look, at the
    # other run's samples and checkpoints
    assert "Pipeline failed" not in printed.out and "Checkpoints:" not in printed.out
    assert not (Path(raw["output"]["output_path"]) / "checkpoints").exists()


def test_overrides_as_a_flow_parameter_reach_the_steps_and_the_mlflow_runs(tmp_path, mlflow_store_module):
    from flows.pipeline_flow import pipeline_flow

    raw = config(tmp_path, "overrides", [{"name": "warm", **VAE}])
    overrides = ["training.seed=3", "training.pipeline.steps.warm.kl_beta=0.5"]
    state = pipeline_flow(raw, overrides=overrides, return_state=True)
    assert state.is_completed(), state.message
    pipelines, steps = mlflow_runs("overrides")
    assert json.loads(pipelines[0].data.tags["fluxflow.overrides"]) == overrides
    assert (steps[0].data.params["seed"], steps[0].data.params["kl_beta"]) == ("3", "0.5")


def test_seed_replicates_are_grouped_per_hypothesis_and_compared_with_their_spread(tmp_path, mlflow_store_module,
                                                                                    capsys):
    """Three hypotheses x 3 seed replicates after a shared warm-up: `same` is `a` again (it differs only in its fresh
    flow weights), `planted` logs a known smaller flow_loss (its min-SNR weights are at most 0.48). Measured: a 2.31,
    1.95, 2.02; planted 0.79, 1.17, 0.77."""
    from flows import cli_compare
    from flows.hypotheses import BEYOND, PAIRED, WITHIN

    flow = {"n_epochs": 1, "max_steps": 6, "train_diff": True, "lr": 3e-3, "after": "warm"}
    raw = config(tmp_path, "replicates", [{"name": "warm", **VAE}, {"name": "a", **flow}, {"name": "same", **flow},
                                          {"name": "planted", **flow, "loss_weighting": "min_snr"}],
                 no_samples=True)
    raw["training"]["pipeline"]["datasets"]["shapes"]["size"] = 48
    raw["training"]["replicates"] = {"seeds": [0, 1, 2], "from_steps": ["a", "same", "planted"]}
    raw["tracking"]["register_steps"] = []
    state, _ = run_flow(raw)
    assert state.is_completed(), state.message

    pipelines, steps = mlflow_runs("replicates")
    leaves = [r for r in steps if r.data.params["hypothesis"] != "warm"]
    grouped = {}
    for run in leaves:
        grouped.setdefault(run.data.params["hypothesis"], set()).add((run.data.tags["fluxflow.step_name"],
                                                                      run.data.params["seed"]))
    assert grouped == {h: {(f"{h}-seed{s}", str(s)) for s in (0, 1, 2)} for h in ("a", "same", "planted")}
    assert {r.data.tags["mlflow.parentRunId"] for r in steps} == {pipelines[0].info.run_id}
    # what fluxflow-compare expects of the pipeline: its leaves and their hypotheses (those that did not run are said)
    assert json.loads(pipelines[0].data.tags["fluxflow.leaves"]) == {
        f"{h}-seed{s}": h for h in ("a", "same", "planted") for s in (0, 1, 2)}

    import mlflow

    logged = mlflow.artifacts.load_dict(f"runs:/{pipelines[0].info.run_id}/hypotheses.json")  # on the parent run
    flow = {(d["a"], d["b"]): d for d in logged["differences"] if d["metric"] == "flow_loss"}
    assert {pair: d["test"] for pair, d in flow.items()} == {pair: PAIRED for pair in flow}  # seeds 0, 1, 2 on each
    assert flow["a", "planted"]["verdict"] == flow["same", "planted"]["verdict"] == BEYOND
    assert flow["a", "planted"]["better"] == "planted"  # a loss: lower is better
    # `same` is `a` again under another name: replicate k of both shares the parent, the fresh weights (seed + depth,
    # the same for branches of one parent), data order and batch noise, so they train alike: no difference at all.
    assert flow["a", "same"]["difference"] == 0.0 and flow["a", "same"]["verdict"] == WITHIN

    capsys.readouterr()
    assert cli_compare.main(["--experiment", "replicates", "--output", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    lines = [line.split() for line in printed.splitlines()]
    assert lines[0] == ["a", "same", "planted"]
    assert ["replicates", "3", "3", "3"] in lines
    flow_loss = next(line for line in printed.splitlines() if line.startswith("metric: flow_loss"))
    assert flow_loss.count("±") == 3 and flow_loss.count("[") == 3
    print(printed)  # shown with -s: the table quoted in README.md
    differences = {tuple(line.split()[1:4]): line for line in printed.splitlines() if line.startswith("flow_loss ")}
    assert BEYOND in differences[("planted", "−", "a")] and "planted (lower)" in differences[("planted", "−", "a")]
    assert all(PAIRED in line for line in differences.values())
    assert json.loads((tmp_path / "cmp" / "compare_replicates.json").read_text())["replicates"]["a"] == [
        "a-seed0", "a-seed1", "a-seed2"]
