"""The MLflow tracker on its own (no Prefect, no training): which run a step writes to, and how it writes."""
import http.server
import json
import threading
import time
from pathlib import Path

import pytest
from helpers_tiny import tiny_raw
from mlflow.tracking import MlflowClient

from flows.mlflow_runs import (create_run_once, experiment_id_for, find_runs, flatten_params, open_pipeline_run,
                               pipeline_run_tags, resolve_tracking_uri)
from flows.mlflow_tracker import MlflowTracker
from fluxflow.checkpoints.ref import CheckpointRef, StepResult
from fluxflow.config import load_config
from fluxflow.output_layout import metrics_file
from fluxflow.train.tracking import Progress, jsonl_record

STEPS = [{"name": "warm", "n_epochs": 1, "train_vae": True, "kl_beta": 0.25},
         {"name": "gan", "n_epochs": 2, "train_vae": True, "gan_training": True}]


@pytest.fixture
def setup(mlflow_store, tmp_path):
    client = MlflowClient(mlflow_store)
    experiment = experiment_id_for(client, "unit")
    out = str(tmp_path / "out")
    parent = open_pipeline_run(client, experiment, out, {"fluxflow.config_hash": "abc"})
    steps = load_config(tiny_raw(out, STEPS)).config.resolved_steps()
    return client, experiment, parent, out, steps


def test_the_experiment_of_a_run_is_refused_when_deleted(mlflow_store):
    """A step's recorder, finding the experiment by name (MLflow did not answer at the flow's start), took a deleted
    one's id: each of its calls was then dropped as rejected, none saying why."""
    from flows.mlflow_runs import StoreUnusable

    client = MlflowClient(mlflow_store)
    deleted = client.create_experiment("gone")
    client.delete_experiment(deleted)
    with pytest.raises(StoreUnusable, match=f"^tracking.experiment_name: experiment 'gone' at .* is deleted; restore "
                                            f"it with: .* mlflow experiments restore -x {deleted}; or choose another"):
        experiment_id_for(client, "gone")
    client.restore_experiment(deleted)
    assert experiment_id_for(client, "gone") == deleted


class FakeMlflowServer(http.server.BaseHTTPRequestHandler):
    """Answers /health 200 and every API request with `status` and `body`; records each API request."""

    status, body, seen = 503, b"<html>upstream down</html>", []

    def do_GET(self):  # noqa: N802  (http.server's naming)
        health = self.path == "/health"
        body = b"OK" if health else self.body
        if not health:
            self.seen.append((self.path, self.headers.get("Authorization")))
        self.send_response(200 if health else self.status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_server(monkeypatch):
    """(start(status, body) -> url, the requests it saw); no MLflow credentials in the environment."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    seen, servers = [], []

    def start(status, body):
        handler = type("Handler", (FakeMlflowServer,), {"status": status, "body": body, "seen": seen})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start, seen
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status, body", [(503, b'{"error_code": "INTERNAL_ERROR", "message": "backend down"}'),
                                          (403, b"<html>forbidden</html>"), (200, b"<html>a proxy's page</html>")])
def test_a_server_whose_api_fails_is_not_known_to_hold_a_deleted_experiment_and_is_asked_once(fake_server, status,
                                                                                               body):
    """A server answering /health but failing its API (its database down, a proxy's 503 or 403): the check went
    through MLflow's retrying client (about 4 minutes), then fluxflow-train exited 1 with a traceback; before it,
    such a run started and its records waited."""
    from flows.mlflow_runs import deleted_experiment_problem

    start, seen = fake_server
    url = start(status, body)
    began = time.monotonic()
    assert deleted_experiment_problem(url, "hunt") is None
    assert time.monotonic() - began < 2
    assert seen == [("/api/2.0/mlflow/experiments/get-by-name?experiment_name=hunt", None)]


def test_a_deleted_experiment_on_a_server_is_said_with_how_to_restore_it(fake_server, monkeypatch):
    from flows.mlflow_runs import deleted_experiment_problem

    start, seen = fake_server
    experiment = {"experiment_id": "7", "name": "a hunt", "artifact_location": "mlflow-artifacts:/7"}
    deleted = start(200, json.dumps({"experiment": dict(experiment, lifecycle_stage="deleted")}).encode())
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tracker")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pass")
    assert deleted_experiment_problem(deleted, "a hunt") == (
        f"tracking.experiment_name: experiment 'a hunt' at {deleted} is deleted; restore it with: "
        f"MLFLOW_TRACKING_URI={deleted} mlflow experiments restore -x 7; or choose another name")
    assert seen == [("/api/2.0/mlflow/experiments/get-by-name?experiment_name=a+hunt", "Basic dHJhY2tlcjpwYXNz")]
    active = start(200, json.dumps({"experiment": dict(experiment, lifecycle_stage="active")}).encode())
    assert deleted_experiment_problem(active, "a hunt") is None


def tracker(setup, session="s1"):
    client, experiment, parent, out, _ = setup
    return MlflowTracker(client, experiment, parent, out, session=session)


def progress(step, global_step, epoch=1):
    return Progress(step, 1, 2, epoch, 2, global_step, 10, global_step, 0.5)


def finish(t, name, key, global_step, trained=True):
    ref = CheckpointRef(f"/ckpt/{name}/final.pt", "0" * 64, name, key, global_step, 1)
    t.step_finished(ref, StepResult(name, "epochs_done", 1, {"vae_loss": 0.5}, trained=trained))
    assert t.flush()


def step_runs(client, experiment):
    return client.search_runs([experiment], "tags.`fluxflow.kind` = 'step'")


def test_tracking_uri_prefers_the_environment_then_the_config(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from-env.db")
    assert resolve_tracking_uri("http://from-config:5000") == "sqlite:///from-env.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert resolve_tracking_uri("http://from-config:5000") == "http://from-config:5000"
    assert resolve_tracking_uri(None).endswith("mlflow.db")  # MLflow's own default


def test_a_tracking_server_that_does_not_answer_is_told_apart_in_one_quick_request():
    from mlflow_server import free_port

    from flows.mlflow_runs import unreachable_reason

    started = time.monotonic()
    assert "refused" in unreachable_reason(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert time.monotonic() - started < 2  # not MLflow's retries, which take minutes
    assert unreachable_reason("sqlite:///mlflow.db") is None  # a local store always "answers"


def test_flatten_params_gives_dotted_keys_and_string_values():
    flat = flatten_params({"lr": 1e-4, "optimization": {"optimizers": {"vae": {"betas": [0.9, 0.99]}}}, "x": None})
    assert flat == {"lr": "0.0001", "optimization.optimizers.vae.betas": "[0.9, 0.99]", "x": "None"}


def test_a_param_longer_than_mlflow_keeps_is_shortened_so_that_two_values_stay_apart():
    """MLflow cuts a param after 6000 characters without a word: two shard lists sharing their first 6000 characters
    would look equal, and the kept part is not JSON."""
    urls = [f"s3://bucket/train/shard-{i:06d}.tar" for i in range(400)]
    one, other = (flatten_params({"dataset": {"urls": u}})["dataset.urls"] for u in (urls, urls[:-1]))
    assert len(one) < 6000 and len(other) < 6000 and one != other
    assert one.startswith('["s3://bucket/train/shard-000000.tar"') and "sha256" in one
    assert flatten_params({"urls": urls[:3]})["urls"] == json.dumps(urls[:3])  # short values stay as they are


def test_a_step_is_a_nested_run_with_its_resolved_config_and_metrics_at_the_global_step(setup):
    client, experiment, parent, _, steps = setup
    t = tracker(setup)
    calls = []
    log_batch = client.log_batch
    client.log_batch = lambda *a, **k: (calls.append(k), log_batch(*a, **k))[1]
    t.step_started(steps[0], "key-warm", 2, resumed=False)
    for global_step in (1, 2, 3):
        t.log_metrics({"vae_loss": 1.0 / global_step, "kl_loss": 0.1}, progress("warm", global_step))
        assert t.flush()
    metric_calls = [c for c in calls if c.get("metrics")]
    assert len(metric_calls) == 3  # one call per log interval, never one per metric
    finish(t, "warm", "key-warm", 3)

    run = client.get_run(t.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.run_name == "warm" and run.info.status == "FINISHED"
    assert run.data.params["kl_beta"] == "0.25"
    assert run.data.params["name"] == "warm"
    assert [(m.step, m.value) for m in client.get_metric_history(t.run_id, "vae_loss")] == [(1, 1.0), (2, 0.5),
                                                                                          (3, 1.0 / 3)]
    assert run.data.metrics["final/vae_loss"] == 0.5
    assert run.data.tags["fluxflow.outcome"] == "epochs_done"
    assert [a.path for a in client.list_artifacts(t.run_id)] == ["checkpoint_ref.json"]


def test_a_step_run_from_the_task_has_the_model_and_dataset_values_as_params(setup, tmp_path):
    """`--set model.vae_dim=...` or another dataset changes the step key (it trains again) but no field of the step:
    without these params two such pipelines show the same params in the MLflow UI and `fluxflow-compare`."""
    from flows.mlflow_runs import TrackingTarget
    from flows.step_task import make_tracker

    client, experiment, parent, out, _ = setup
    config = load_config(tiny_raw(out, STEPS)).config
    target = TrackingTarget(client.tracking_uri, experiment, parent, "s1", "out")
    _, t = make_tracker(config, target, step_name="gan")
    t.step_started(config.step("gan"), "key-gan", 2, resumed=False)
    assert t.flush()
    params = client.get_run(t.run_id).data.params
    assert params["model.vae_dim"] == str(config.model.vae_dim)
    assert params["dataset.type"] == "shapes" and params["dataset.size"] == "32"
    assert params["gan_training"] == "True" and params["dataset"] == "shapes"  # the step's own fields stay


def test_a_webdataset_variable_is_recorded_as_the_shards_it_names(tmp_path, monkeypatch):
    """`${N}` in urls is $WDS_N: the run recorded the variable's name, never which shards it trained on."""
    from flows.mlflow_runs import step_context_params

    raw = tiny_raw(tmp_path, STEPS)
    raw["training"]["pipeline"]["datasets"] = {"w": {"type": "webdataset", "urls": "/data/shard-${N}.tar"}}
    raw["training"]["pipeline"]["default_dataset"] = "w"
    config = load_config(raw).config
    monkeypatch.setenv("WDS_N", "{001..002}")
    assert step_context_params(config, config.step("warm"))["dataset.urls"] == "/data/shard-{001..002}.tar"
    assert config.training.pipeline.datasets["w"].urls == "/data/shard-${N}.tar"  # the config keeps what was written


def test_the_older_runs_of_a_step_whose_config_changed_say_which_run_replaced_them(setup):
    """Two FINISHED `warm` runs under one pipeline run, one per config: the UI must tell which one is current."""
    from flows.mlflow_names import TAG_SUPERSEDED_BY

    client, experiment, _, _, steps = setup
    first = tracker(setup, session="s1")
    first.step_started(steps[0], "key-a", 2, resumed=False)
    finish(first, "warm", "key-a", 2)
    second = tracker(setup, session="s2")  # the config changed: a new step key, a new run
    second.step_started(steps[0], "key-b", 2, resumed=False)
    finish(second, "warm", "key-b", 2)
    assert first.run_id != second.run_id
    assert client.get_run(first.run_id).data.tags[TAG_SUPERSEDED_BY] == second.run_id
    assert TAG_SUPERSEDED_BY not in client.get_run(second.run_id).data.tags
    # The filter docs/OPERATIONS.md gives for the MLflow UI's run table: the runs a pipeline's latest config trains.
    current = client.search_runs([experiment], "tags.`fluxflow.kind` = 'step' and "
                                               "tags.`fluxflow.superseded_by` IS NULL")
    assert [r.info.run_id for r in current] == [second.run_id]

    back = tracker(setup, session="s3")  # changed back: the runner reuses the first config's files, skipping the step
    ref = CheckpointRef("/ckpt/warm/final.pt", "0" * 64, "warm", "key-a", 2, 1)
    back.step_skipped(steps[0], ref, StepResult("warm", "epochs_done", 1, {}, trained=False))
    assert back.flush() and back.run_id == first.run_id
    assert TAG_SUPERSEDED_BY not in client.get_run(first.run_id).data.tags
    assert client.get_run(second.run_id).data.tags[TAG_SUPERSEDED_BY] == first.run_id


def test_the_resume_point_tag_reads_as_the_console_line_says_it(setup):
    """Console: "Resuming from checkpoint: ... epoch=1, batch=14"; StepResult holds (0, 14) (0-based epoch)."""
    client, _, _, _, steps = setup
    for session, resumed_from, expected in (("s1", None, ""), ("s2", (0, 14), "epoch 1, batch 14")):
        t = tracker(setup, session=session)
        t.step_started(steps[0], "key-warm", 2, resumed=resumed_from is not None)
        ref = CheckpointRef("/ckpt/warm/final.pt", "0" * 64, "warm", "key-warm", 3, 1)
        t.step_finished(ref, StepResult("warm", "epochs_done", 1, {}, resumed_from=resumed_from))
        assert t.flush()
        assert client.get_run(t.run_id).data.tags["fluxflow.resumed_from"] == expected


def test_images_go_under_samples(setup, tmp_path):
    client, _, _, _, steps = setup
    image = tmp_path / "warm_001_001_abc123-nr_o.webp"
    image.write_bytes(b"RIFF0000WEBP")
    t = tracker(setup)
    t.step_started(steps[0], "k", 2, resumed=False)
    t.log_image(image)
    assert t.flush()
    assert [a.path for a in client.list_artifacts(t.run_id, "samples")] == [f"samples/{image.name}"]


def test_a_skipped_step_links_the_run_that_trained_it(setup):
    client, experiment, _, _, steps = setup
    first = tracker(setup)
    first.step_started(steps[0], "key-warm", 2, resumed=False)
    first.log_metrics({"vae_loss": 1.0}, progress("warm", 1))
    finish(first, "warm", "key-warm", 1)

    again = tracker(setup, session="s2")  # the runner reports nothing for a skipped step
    ref = CheckpointRef("/ckpt/warm/final.pt", "0" * 64, "warm", "key-warm", 1, 1)
    again.step_skipped(steps[0], ref, StepResult("warm", "epochs_done", 1, {"vae_loss": 0.5}, trained=False))
    assert again.flush() and again.run_id == first.run_id
    assert len(step_runs(client, experiment)) == 1


def test_a_skipped_step_that_no_run_recorded_gets_one_from_its_files(setup):
    """It trained while MLflow was down and its process ended before the server answered: the next run of the same
    command, which finds it complete, records it from its metrics file."""
    client, experiment, parent, out, steps = setup
    lines = [jsonl_record({"vae_loss": 1.0 / s}, progress("warm", s), "killed-session") for s in (1, 2, 3)]
    lines.append(jsonl_record({"eval_psnr": 20.0}, progress("warm", 3), "killed-session"))  # the epoch's evaluation
    metrics_file(out, "warm").parent.mkdir(parents=True)
    metrics_file(out, "warm").write_text("".join(json.dumps(line) + "\n" for line in lines))
    later = tracker(setup, session="s2")
    ref = CheckpointRef("/ckpt/warm/final.pt", "0" * 64, "warm", "key-warm", 3, 1)
    later.step_skipped(steps[0], ref, StepResult("warm", "epochs_done", 1, {"vae_loss": 1 / 3}, trained=False))
    assert later.flush()
    [run] = step_runs(client, experiment)
    assert run.info.run_id == later.run_id and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent and run.data.params["name"] == "warm"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "vae_loss")] == [1, 2, 3]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch")] == [1, 2, 3]  # not 3 twice
    assert run.data.metrics["final/vae_loss"] == 1 / 3


def test_a_step_resumed_after_a_kill_that_came_before_its_run_was_made_gets_the_points_of_its_file(setup):
    """Killed before the tracking thread had made the step's run (a loaded machine: its first requests take seconds),
    the step resumes in a new process: the run it makes holds the points the killed one logged to its file."""
    client, experiment, _, out, steps = setup
    lines = [jsonl_record({"vae_loss": 1.0 / s}, progress("warm", s), "killed-session") for s in (1, 2, 3)]
    metrics_file(out, "warm").parent.mkdir(parents=True)
    metrics_file(out, "warm").write_text("".join(json.dumps(line) + "\n" for line in lines))
    later = tracker(setup, session="s2")
    later.step_started(steps[0], "key-warm", 3, resumed=True)
    later.log_metrics({"vae_loss": 0.2}, progress("warm", 4))
    assert later.flush()
    [run] = step_runs(client, experiment)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "vae_loss")] == [1, 2, 3, 4]


def test_a_run_whose_params_a_kill_cut_off_gets_them_when_the_step_resumes(setup):
    client, experiment, _, out, steps = setup
    first = tracker(setup, session="s1")
    first.recorder.step, first.recorder.step_key = steps[0], "key-warm"
    bare = create_run_once(client, experiment, first.recorder._tags(), "warm")  # killed before its params were sent
    client.log_param(bare, "name", "warm")  # ... or after the first of their chunks of 100
    later = tracker(setup, session="s2")
    later.step_started(steps[0], "key-warm", 3, resumed=True)
    assert later.flush()
    assert later.run_id == bare and client.get_run(bare).data.params["lr"] == str(steps[0].lr)


def test_a_run_recorded_from_files_gets_only_the_samples_of_its_own_step_key(setup):
    """The samples folder keeps the images of a step's earlier configuration (another key's hash in the name): a run
    made or completed from the files must not show them as its own."""
    client, _, _, out, steps = setup
    samples = Path(out) / "samples"
    samples.mkdir(parents=True)
    for name in ("warm_001_001_00001_aaaaaa-original.webp", "warm_001_001_aaaaaa_ns_o.webp",
                 "warm_001_001_bbbbbb-original.webp", "warm_001_001_00001_bbbbbb-nr_o.webp"):
        (samples / name).write_bytes(b"RIFF0000WEBP")
    t = tracker(setup, session="s2")
    ref = CheckpointRef("/ckpt/warm/final.pt", "0" * 64, "warm", "aaaaaa0123456789", 3, 1)
    t.step_skipped(steps[0], ref, StepResult("warm", "epochs_done", 1, {}, trained=False))
    assert t.flush()
    listed = sorted(a.path for a in client.list_artifacts(t.run_id, "samples"))
    assert listed == ["samples/warm_001_001_00001_aaaaaa-original.webp", "samples/warm_001_001_aaaaaa_ns_o.webp"]


@pytest.mark.parametrize("resumed, session, first_status, same_run", [
    (True, "s2", "FAILED", True),  # resumed from latest.pt in a later flow run: continue the run
    (False, "s1", "FAILED", True),  # retried within the same flow run (even from scratch): continue the run
    (False, "s2", "KILLED", True),  # killed before its first checkpoint, trained again from batch 0: same run
    (False, "s2", "RUNNING", True),  # the same after a kill -9, which left the run RUNNING
    (False, "s2", "FINISHED", False),  # trained from scratch again (output wiped): a fresh run
])
def test_which_run_a_restarted_step_continues(setup, resumed, session, first_status, same_run):
    client, experiment, _, _, steps = setup
    first = tracker(setup, session="s1")
    first.step_started(steps[1], "key-gan", 2, resumed=False)
    first.log_metrics({"vae_loss": 1.0}, progress("gan", 4))
    if first_status != "RUNNING":
        first.step_failed(status=first_status)
    assert first.flush()
    assert client.get_run(first.run_id).info.status == first_status

    second = tracker(setup, session=session)
    second.step_started(steps[1], "key-gan", 2, resumed=resumed)
    second.log_metrics({"vae_loss": 0.5}, progress("gan", 5))
    finish(second, "gan", "key-gan", 6)
    assert (second.run_id == first.run_id) is same_run
    assert len(step_runs(client, experiment)) == (1 if same_run else 2)
    assert client.get_run(second.run_id).info.status == "FINISHED"


def test_the_pipeline_run_of_an_output_directory_is_reused(setup):
    client, experiment, parent, out, _ = setup
    assert open_pipeline_run(client, experiment, out, {"fluxflow.config_hash": "def"}) == parent
    assert client.get_run(parent).data.tags["fluxflow.config_hash"] == "def"
    other = open_pipeline_run(client, experiment, str(Path(out).parent / "elsewhere"), {})
    assert other != parent


class ResendingClient(MlflowClient):
    """A client whose create_run reaches the server twice, the answer of the first lost: what MLflow's client does
    when a server is killed after committing a run and started again before the retry."""

    def create_run(self, *args, **kwargs):
        super().create_run(*args, **kwargs)
        return super().create_run(*args, **kwargs)


def test_a_run_created_twice_by_a_resent_request_leaves_one_run(setup):
    client, experiment, _, out, steps = setup
    resending = ResendingClient(client.tracking_uri)
    other = str(Path(out).parent / "other")
    parent = open_pipeline_run(resending, experiment, other, {})
    t = MlflowTracker(resending, experiment, parent, other, session="s1")
    t.step_started(steps[0], "k0", 1, resumed=False)
    assert t.flush()
    [pipeline] = find_runs(client, experiment, pipeline_run_tags(other))
    [step] = step_runs(client, experiment)
    assert (pipeline.info.run_id, step.info.run_id) == (parent, t.run_id)
    assert step.data.params  # the run that was kept is the one the step wrote to


def test_a_step_run_on_torchrun_ranks_is_recorded_from_the_files_rank_0_wrote(setup):
    client, experiment, _, out, steps = setup
    gan = steps[1]
    (Path(out) / "graph").mkdir(parents=True)
    (Path(out) / "samples").mkdir()
    lines = [{"timestamp": f"2025-12-09T17:30:0{i}", "session_id": "x", "epoch": 1, "batch": i, "global_step": 3 + i,
              "metrics": {"vae_loss": 1.0 / i, "d_loss": None}} for i in (1, 2)]
    (Path(out) / "graph" / "training_metrics_gan.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    for name in ("gan_002_001_abc123-nr_o.webp", "warm_001_001_abc123-nr_o.webp"):
        (Path(out) / "samples" / name).write_bytes(b"RIFF0000WEBP")

    t = tracker(setup)
    key = "abc1230123456789"  # a sample's name holds the first 6 characters of its step's key
    ref = CheckpointRef(f"{out}/checkpoints/gan/final.pt", "0" * 64, "gan", key, 5, 2)
    t.record_from_files(gan, key, ref, StepResult("gan", "epochs_done", 1, {"vae_loss": 0.5}))
    assert t.flush()
    assert [(m.step, m.value) for m in client.get_metric_history(t.run_id, "vae_loss")] == [(4, 1.0), (5, 0.5)]
    assert [a.path for a in client.list_artifacts(t.run_id, "samples")] == ["samples/gan_002_001_abc123-nr_o.webp"]
    assert {a.path for a in client.list_artifacts(t.run_id)} >= {"checkpoint_ref.json", "training_metrics_gan.jsonl"}
    assert client.get_run(t.run_id).info.status == "FINISHED"


def points(client, run_id) -> list[tuple[str, int]]:
    """Every (key, step) point of a run, duplicates included."""
    keys = client.get_run(run_id).data.metrics
    return sorted((key, m.step) for key in keys for m in client.get_metric_history(run_id, key))


def test_no_metric_point_is_logged_twice_for_the_same_key_and_step(setup):
    """A resumed step trains and reports again the batches between its last checkpoint and the kill; an epoch's end
    reports `epoch` with its last log interval and with its evaluation, at the same global step."""
    client, _, _, _, steps = setup
    first = tracker(setup, session="s1")
    first.step_started(steps[1], "key-gan", 2, resumed=False)
    for global_step in (1, 2, 3, 4):  # killed after 4; its last checkpoint was at 2
        first.log_metrics({"vae_loss": 1.0 / global_step}, progress("gan", global_step))
    assert first.flush()

    resumed = tracker(setup, session="s2")
    resumed.step_started(steps[1], "key-gan", 2, resumed=True)
    for global_step in (3, 4, 5, 6):
        resumed.log_metrics({"vae_loss": 1.0 / global_step}, progress("gan", global_step))
    resumed.log_metrics({"eval_psnr": 20.0}, Progress("gan", 1, 2, 1, 2, 6, 10, 6, float("nan")))
    finish(resumed, "gan", "key-gan", 6)
    found = points(client, resumed.run_id)
    assert len(found) == len(set(found)), found
    assert [s for k, s in found if k == "vae_loss"] == [1, 2, 3, 4, 5, 6]
    assert [s for k, s in found if k == "epoch"] == [1, 2, 3, 4, 5, 6]


def test_a_skipped_step_whose_run_a_kill_left_open_is_closed_with_its_files(setup):
    """Killed after ref.json, before its run was closed: the re-run skips the step and closes the run FINISHED, with
    its final metrics and the points of its metrics file the run had not received."""
    client, _, _, out, steps = setup
    killed = tracker(setup, session="s1")
    killed.step_started(steps[0], "key-warm", 2, resumed=False)
    killed.log_metrics({"vae_loss": 1.0}, progress("warm", 1))
    assert killed.flush()
    lines = [{"timestamp": f"2025-12-09T17:30:0{i}", "session_id": "x", "epoch": 1, "batch": i, "global_step": i,
              "metrics": {"vae_loss": 1.0 / i}} for i in (1, 2, 3)]
    (Path(out) / "graph").mkdir(parents=True)
    (Path(out) / "graph" / "training_metrics_warm.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))

    again = tracker(setup, session="s2")
    ref = CheckpointRef(f"{out}/checkpoints/warm/final.pt", "0" * 64, "warm", "key-warm", 3, 1)
    again.step_skipped(steps[0], ref, StepResult("warm", "epochs_done", 1, {"vae_loss": 0.25}, trained=False))
    assert again.flush() and again.run_id == killed.run_id
    run = client.get_run(again.run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["final/vae_loss"] == 0.25
    assert sorted(m.step for m in client.get_metric_history(again.run_id, "vae_loss")) == [1, 2, 3]


def test_metric_batches_refused_by_a_full_queue_are_sent_from_the_metrics_file(setup, caplog):
    import threading

    from flows.tracking_queue import TrackingQueue

    client, experiment, parent, out, steps = setup
    queue = TrackingQueue(max_points=6)  # two batches of (vae_loss, epoch, sec_per_batch)
    t = MlflowTracker(client, experiment, parent, out, session="s1", queue=queue)
    gate = threading.Event()
    queue.put(gate.wait)  # an unreachable server: nothing goes out
    t.step_started(steps[0], "key-warm", 2, resumed=False)
    graph = Path(out) / "graph"
    graph.mkdir(parents=True)
    for global_step in range(1, 7):  # the console tracker writes every line to the metrics file first
        with open(graph / "training_metrics_warm.jsonl", "a") as f:
            f.write(json.dumps({"timestamp": f"2025-12-09T17:30:0{global_step}", "session_id": "x", "epoch": 1,
                                "batch": global_step, "global_step": global_step,
                                "metrics": {"vae_loss": 1.0 / global_step}}) + "\n")
        t.log_metrics({"vae_loss": 1.0 / global_step}, progress("warm", global_step))
        if global_step == 5:  # batches 3-5 were refused; the server answers again
            assert "metric points wait in memory" in caplog.text
            gate.set()
            assert queue.wait(queue.put(lambda: None), stall_s=10)
    finish(t, "warm", "key-warm", 6)
    assert sorted(m.step for m in client.get_metric_history(t.run_id, "vae_loss")) == [1, 2, 3, 4, 5, 6]


def test_a_training_health_warning_becomes_a_tag_of_the_step_run(setup):
    client, _, _, _, steps = setup
    t = tracker(setup)
    t.step_started(steps[1], "key-gan", 2, resumed=False)
    t.warn("flat_discriminator", "Step gan: the discriminator has been flat for 200 updates")
    assert t.flush()
    tags = client.get_run(t.run_id).data.tags
    assert tags["fluxflow.warning.flat_discriminator"] == "Step gan: the discriminator has been flat for 200 updates"


def test_one_batch_of_points_holding_a_key_twice_at_one_step_logs_it_once():
    """The tracking thread sends what queued since its last send in one batch: an epoch's last log interval and its
    evaluation, both with `epoch` at the same global step, can share it (the intermittent duplicate this pins)."""
    from mlflow.entities import Metric

    from flows.mlflow_step_run import StepRunRecorder

    sent = []
    recorder = StepRunRecorder(client=None, experiment_id="1", parent_run_id="p", output_dir="out", session="s")
    recorder.client = type("Client", (), {"log_batch": lambda self, run_id, metrics: sent.extend(metrics)})()
    recorder.run_id, recorder.last_step = "r", {"epoch": 4}
    recorder.log_points([Metric("epoch", 1.0, 0, 4), Metric("epoch", 1.0, 0, 5), Metric("flow_loss", 0.2, 0, 5),
                         Metric("epoch", 1.0, 0, 6), Metric("eval_psnr", 20.0, 0, 6), Metric("epoch", 1.0, 0, 6)])
    assert [(m.key, m.step) for m in sent] == [("epoch", 5), ("flow_loss", 5), ("epoch", 6), ("eval_psnr", 6)]


def test_the_end_of_a_step_does_not_wait_on_a_server_known_to_be_down(setup):
    from flows.tracking_queue import TrackingQueue

    client, experiment, parent, out, steps = setup
    queue = TrackingQueue()
    queue.mark_unreachable("http://x: refused", "out/graph", answers=lambda: False)
    t = MlflowTracker(client, experiment, parent, out, session="s1", queue=queue)
    t.step_started(steps[0], "key-warm", 0, resumed=False)
    t.log_metrics({"vae_loss": 1.0}, progress("warm", 1))
    started = time.monotonic()
    assert not t.flush()  # the records stay queued: the end of the run waits for them, not the end of each step
    assert time.monotonic() - started < 2  # the stall limit of a step's flush is 10 s
    assert queue.pending() == 2


def test_the_deleted_experiment_check_makes_no_store(tmp_path):
    """Asked before the run of a store not made yet, it made it (MLflow's client creates its SQLite file): the run's
    own ./mlflow.db before the run, in whatever folder it was asked from."""
    from flows.mlflow_runs import deleted_experiment_problem

    assert deleted_experiment_problem(f"sqlite:///{tmp_path / 'new.db'}", "fluxflow") is None
    assert not (tmp_path / "new.db").exists()
