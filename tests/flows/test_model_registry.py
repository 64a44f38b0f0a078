"""The retraining loop on a real MLflow store (sqlite) and the Prefect flow: every run registers its flow step's final
checkpoint, the better version holds `champion`, a worse one does not take it, and the champion generates the same
images by name (`fluxflow-generate --model`, `mlflow.pyfunc.load_model`) as its checkpoint file.

Three tiny pipelines differ only in how their flow step trains, chosen (measured here once) so that the Fréchet
distance they are promoted on is ordered without doubt: `barely` (1 batch at lr 1e-6), `longer` (6 epochs at 3e-3:
lower, i.e. better) and `diverged` (lr 1.0: clearly higher). The first run goes through the nightly deployment's
entrypoint and parameters.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers_tiny import generated_pixels, tiny_raw
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MODEL = "loop"
FLOWS = {"barely": {"max_steps": 1, "lr": 1e-6}, "longer": {"n_epochs": 6, "lr": 3e-3},
         "diverged": {"max_steps": 3, "lr": 1.0}}


@pytest.fixture(autouse=True)
def _prefect(prefect_api):
    """Every test here talks to the session's Prefect test API."""


def pipeline(output: str, flow: dict) -> dict:
    raw = tiny_raw(output, [{"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True},
                            {"name": "flow", "n_epochs": 1, "train_diff_full": True, "ema_decay": 0.5, **flow}],
                   dataset_size=64, no_samples=True)
    raw["training"]["pipeline"]["datasets"]["shapes"]["holdout"] = 16
    raw["tracking"] = {"experiment_name": MODEL}
    raw["promotion"] = {"metric": "eval_fd_ours_cfg", "n_images": 16, "sampler_steps": 5}
    return raw


def nightly_flow():
    """The nightly deployment's flow function and parameters, from deployments/prefect.yaml."""
    spec = yaml.safe_load((REPO / "deployments" / "prefect.yaml").read_text())
    nightly = next(d for d in spec["deployments"] if d["name"] == "nightly-retrain")
    module, function = nightly["entrypoint"].split(":")
    module = importlib.import_module(module)
    return getattr(module, function), nightly["parameters"]


@pytest.fixture(scope="module")
def loop(mlflow_store_module):
    """Three pipeline runs into one store: {name: (flow run id, outcomes)} in the order they ran."""
    flow, params = nightly_flow()
    runs = {}
    for name, flow_step in FLOWS.items():
        output = params["output_dir"] if name == "barely" else f"outputs/{name}"
        state = flow(pipeline("unused", flow_step), output_dir=output, device=params["device"],
                     return_state=True)
        assert state.is_completed(), f"{name}: {state.message}"
        runs[name] = (state.state_details.flow_run_id, state.result())
        # MLflow's model logging must not take the store's address away from the rest of the process.
        assert os.environ["MLFLOW_TRACKING_URI"] == mlflow_store_module
    return runs


def versions() -> dict[str, object]:
    client = MlflowClient()
    return {str(v.version): client.get_model_version(MODEL, v.version)
            for v in client.search_model_versions(f"name = '{MODEL}'")}


def flow_outcome(runs, name) -> dict:
    return runs[name][1][-1]


def test_each_run_registers_its_flow_checkpoint_linked_to_its_step_run_and_flow_run(loop, tmp_path):
    client = MlflowClient()
    found = versions()
    assert sorted(found) == ["1", "2", "3"]
    for number, name in zip(("1", "2", "3"), FLOWS):
        flow_run_id, _ = loop[name]
        outcome, version = flow_outcome(loop, name), found[number]
        assert version.run_id == outcome["run_id"]  # the step's MLflow run ...
        step_run = client.get_run(version.run_id)
        pipeline_run = client.get_run(step_run.data.tags["mlflow.parentRunId"])
        assert pipeline_run.data.tags["prefect.flow_run_id"] == str(flow_run_id)  # ... in the flow run's pipeline
        assert version.tags["prefect.flow_run_id"] == str(flow_run_id)
        assert version.tags["fluxflow.pipeline_run_id"] == pipeline_run.info.run_id
        assert version.tags["fluxflow.checkpoint_sha256"] == outcome["ref"]["sha256"]
        assert step_run.data.tags["fluxflow.registered_model_version"] == f"{MODEL}/{number}"
        # The model: the checkpoint itself (same bytes), the resolved config, the step's final metrics.
        from flows.registry import model_checkpoint
        from fluxflow.checkpoints.io import sha256_file

        checkpoint = model_checkpoint(f"models:/{MODEL}/{number}", client.tracking_uri, tmp_path)
        assert sha256_file(checkpoint) == outcome["ref"]["sha256"]
        config = json.loads((checkpoint.parent / "config.json").read_text())
        assert config["training"]["pipeline"]["steps"][1]["lr"] == FLOWS[name].get("lr")
        model = client.get_logged_model(version.source.split("/", 1)[1])
        assert model.experiment_id == step_run.info.experiment_id
        finals = {m.key: m.value for m in model.metrics}
        assert finals["final/eval_fd_ours_cfg"] == pytest.approx(outcome["result"]["final_metrics"]["eval_fd_ours_cfg"])


def test_the_better_version_holds_champion_and_a_worse_third_does_not_take_it(loop):
    found = versions()
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "2"
    tags = {number: {k.removeprefix("fluxflow.promotion."): v for k, v in version.tags.items()
                     if k.startswith("fluxflow.promotion.")} for number, version in found.items()}
    assert tags["1"]["decision"] == "promoted" and tags["1"]["reason"] == "no champion yet"
    assert tags["2"]["decision"] == "promoted" and tags["2"]["champion"] == "1"
    assert float(tags["2"]["value"]) < float(tags["2"]["champion_value"])  # lower Fréchet distance
    assert tags["3"]["decision"] == "not promoted" and tags["3"]["champion"] == "2"
    assert float(tags["3"]["value"]) > float(tags["3"]["champion_value"]) and "worse by" in tags["3"]["reason"]
    # The champion is measured again on the same held-out images and seeds: the same number each time.
    assert tags["3"]["champion_value"] == tags["2"]["value"]
    assert tags["1"]["last_challenge"].startswith("version 2 scored") and "replaced" in tags["1"]["last_challenge"]
    assert "version 3" in tags["2"]["last_challenge"] and "kept the alias" in tags["2"]["last_challenge"]
    assert {tags[n]["metric"] for n in tags} == {"eval_fd_ours_cfg"}


def test_the_nightly_deployments_flow_runs_registration_and_promotion_and_publishes_the_decision(loop):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

    flow_run_id, outcomes = loop["barely"]
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        [artifact] = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(
            any_=["diverged-promotion"])), limit=1)
    assert {t.name: t.state.type.value for t in tasks} == {"warm": "COMPLETED", "flow": "COMPLETED",
                                                           "register flow": "COMPLETED", "promote loop": "COMPLETED"}
    assert "| loop v3 | flow |" in artifact.data and "not promoted" in artifact.data
    assert "`models:/loop@champion` is version 2." in artifact.data
    pipeline_run = MlflowClient().get_run(MlflowClient().get_run(outcomes[-1]["run_id"]).data.tags[
        "mlflow.parentRunId"])
    assert pipeline_run.data.tags["fluxflow.promotion"] == "loop version 1: promoted (no champion yet)"


def test_generate_by_name_the_pyfunc_and_the_checkpoint_make_the_same_image(loop, tmp_path):
    import mlflow
    import pandas as pd

    from flows.pyfunc_model import decode_image

    def generated(*source: str) -> np.ndarray:
        return generated_pixels(list(source), tmp_path / "-".join(source).replace("/", "_").replace(":", ""))

    by_file = generated("--checkpoint", flow_outcome(loop, "longer")["ref"]["uri"])
    assert np.array_equal(generated("--model", f"models:/{MODEL}@champion"), by_file)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion", model_config={"device": "cpu"})
    frame = model.predict(pd.DataFrame({"prompt": ["a red circle"]}), params={"seed": 3, "steps": 3})
    assert frame.seed.tolist() == [3]
    assert np.array_equal(np.asarray(decode_image(frame.image[0])), by_file)
    # A list of prompts, or one prompt, is the frame's request (MLflow refused both: "Model is missing inputs").
    assert model.predict(["a red circle"], params={"seed": 3, "steps": 3}).equals(frame)
    assert model.predict("a red circle", params={"seed": 3, "steps": 3}).equals(frame)
    # A version by number is the checkpoint of that version.
    assert np.array_equal(generated("--model", f"models:/{MODEL}/3"),
                          generated("--checkpoint", flow_outcome(loop, "diverged")["ref"]["uri"]))


def test_a_downloaded_model_folder_generates_without_a_tracking_store(loop, tmp_path, monkeypatch):
    """--model DIR, the champion's MLflow model folder copied out of the store: read where it is, with no store at
    the tracking URI (was refused: "no MLflow store at ...")."""
    from mlflow.artifacts import download_artifacts

    folder = download_artifacts(artifact_uri=f"models:/{MODEL}@champion", dst_path=str(tmp_path / "champion"))
    by_file = generated_pixels(["--checkpoint", flow_outcome(loop, "longer")["ref"]["uri"]], tmp_path / "by-file")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/no-store-here.db")
    assert np.array_equal(generated_pixels(["--model", folder], tmp_path / "by-folder"), by_file)


def test_a_model_uri_that_names_nothing_exits_2_saying_so(loop, capsys):
    from flows import cli_generate

    assert cli_generate.main(["--model", f"models:/{MODEL}@nope", "--prompt", "x"]) == 2
    assert "alias nope not found" in capsys.readouterr().err
    # Without alias or version MLflow reads the name as a logged model's id: its message alone did not say that.
    assert cli_generate.main(["--model", f"models:/{MODEL}", "--prompt", "x"]) == 2
    assert capsys.readouterr().err.endswith("; a registered model is named with an alias or a version: "
                                            "models:/NAME@champion or models:/NAME/VERSION\n")


def test_compare_lists_the_versions_with_the_champion_and_their_differences(loop, tmp_path, capsys):
    from flows import cli_compare

    assert cli_compare.main(["--registered-model", MODEL, "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    header, _, *rows = out.splitlines()
    assert header.split() == ["v1", "v2", "(champion)", "v3"]
    lines = {row.split("  ")[0]: row.split() for row in rows if row.strip()}
    assert lines["promotion"][1:] == ["promoted", "promoted", "not", "promoted"]
    assert lines["config: steps.flow.lr"][-3:] == ["1e-06", "0.003", "1.0"]
    assert "metric: eval_fd_ours_cfg" in lines and (tmp_path / f"compare_versions_{MODEL}.png").is_file()


def test_rerunning_a_finished_pipeline_registers_no_second_version_of_the_same_checkpoint(loop, capsys):
    from flows.cli_flow_run import print_where_to_look
    from fluxflow.config.run_config import resolve_run_config

    flow, params = nightly_flow()
    state = flow(pipeline("unused", FLOWS["diverged"]), output_dir="outputs/diverged", return_state=True)
    assert state.is_completed()
    assert sorted(versions()) == ["1", "2", "3"]
    assert str(MlflowClient().get_model_version_by_alias(MODEL, "champion").version) == "2"
    # What fluxflow-train prints at the end: this output directory's version, and the champion.
    config = resolve_run_config(pipeline("unused", FLOWS["diverged"]), output_dir="outputs/diverged").config
    print_where_to_look(config, state.state_details.flow_run_id)
    out = capsys.readouterr().out
    assert "Model:       loop version 3 (step flow): not promoted" in out
    assert "Champion:    models:/loop@champion is version 2" in out


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="no Chromium and chromedriver here (scripts/browser_check.sh installs them)")
def test_the_mlflow_ui_model_page_shows_every_version_and_the_champion(loop, tmp_path):
    """The model's pages in a real headless browser (scripts/browser_model_page.py), over this module's store."""
    pytest.importorskip("selenium")
    sys.path.insert(0, str(REPO / "scripts"))
    from browser_check import make_driver
    from browser_model_page import check_model_page
    from process_groups import group_alive
    from test_e2e_deployment import free_port
    from test_e2e_model_serve import start, stop, wait_until_answers

    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    ui = start([str(Path(sys.executable).parent / "mlflow"), "ui", "--host", "127.0.0.1", "--port", str(port),
                "--backend-store-uri", os.environ["MLFLOW_TRACKING_URI"]], env, Path.cwd(), tmp_path / "ui.log")
    try:
        wait_until_answers(f"http://127.0.0.1:{port}/health", ui, tmp_path / "ui.log", 120)
        driver = make_driver(str(tmp_path / "profile"))
        try:
            problems = check_model_page(driver, f"http://127.0.0.1:{port}", MODEL, "champion", tmp_path, 60)
        finally:
            driver.quit()
    finally:
        stop([ui])
    assert not group_alive(ui.pid)
    assert problems == []
    assert (tmp_path / "mlflow_model.png").stat().st_size > 10_000


def test_serve_models_check_passes_the_uris_the_server_resolves_itself(mlflow_store, tmp_path):
    """scripts/serve_model.sh's check refused a stage (models:/NAME/Production: "VERSION must be a positive
    integer") and read any URI without '://' as a local path (mlflow-artifacts:/..., dbfs:/...), though the server
    serves them; a path that does not exist and a stage no version holds are still one line."""
    from flows.registry import served_model_problem

    client = MlflowClient(mlflow_store)
    client.create_registered_model("m")
    (tmp_path / "model").mkdir()
    version = client.create_model_version("m", str(tmp_path / "model"))
    client.transition_model_version_stage("m", version.version, "Production")
    for uri in ("models:/m/Production", "models:/m/1", "mlflow-artifacts:/0/abc/artifacts/model", "dbfs:/x/model",
                "runs:/abc/model", str(tmp_path / "model"), f"file://{tmp_path / 'model'}"):
        assert served_model_problem(uri, mlflow_store) is None, uri
    assert served_model_problem(str(tmp_path / "nothing"), mlflow_store).startswith(
        f"{tmp_path / 'nothing'}: no such file or folder")
    assert served_model_problem("models:/m/Staging", mlflow_store).startswith("models:/m/Staging: ")


def test_an_artifact_store_that_cannot_answer_does_not_make_a_version_s_files_missing():
    """Promotion asks where the champion's evaluation failed: an S3 outage (botocore's errors are no OSError)
    escaped from it and failed the promotion, where the champion had kept the alias."""
    from botocore.exceptions import EndpointConnectionError

    from flows.model_uri import missing_files_problem

    class Unreachable:
        def get_model_version_download_uri(self, name, version):
            raise EndpointConnectionError(endpoint_url="https://s3.example")

    assert missing_files_problem(Unreachable(), "m", "1") is None
