"""The Prefect flow with its output directory on moto's S3 server: the step runs, MLflow (through its own store, as
ever) and the registered model read from the store, and `fluxflow-generate` and `fluxflow-compare` work on the
result. The kill and resume on the store is tests/storage/test_pipeline_on_s3.py (the core's path, faster)."""
from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
from helpers_tiny import generated_pixels, tiny_raw
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

MODEL = "s3flow"


def test_the_flow_trains_into_s3_registers_from_it_and_generate_and_compare_read_it(s3, prefect_api, mlflow_store,
                                                                                       tmp_path, capsys):
    from flows import cli_compare
    from flows.pipeline_flow import pipeline_flow

    raw = tiny_raw("unused", [{"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True},
                              {"name": "flow", "n_epochs": 1, "max_steps": 3, "train_diff_full": True,
                               "ema_decay": 0.5}], dataset_size=16)
    raw["tracking"] = {"experiment_name": MODEL}
    raw["promotion"] = {"enabled": False}  # registered, not evaluated: promotion does not read the store
    uri = "s3://fluxflow/flow-run"
    state = pipeline_flow(raw, output_dir=uri, device="cpu", return_state=True)
    assert state.is_completed(), state.message
    outcomes = state.result()
    final = outcomes[-1]["ref"]
    assert final["uri"] == f"{uri}/checkpoints/flow/final.pt"

    store = fsspec.filesystem("s3")
    assert json.loads(store.cat_file("fluxflow/flow-run/checkpoints/flow/ref.json"))["ref"] == final
    assert store.ls("fluxflow/flow-run/samples", detail=False, refresh=True)  # samples went to the store too
    assert not store.exists("fluxflow/flow-run/.lock")

    client = MlflowClient()
    [step_run] = client.search_runs([client.get_experiment_by_name(MODEL).experiment_id],
                                    "tags.`fluxflow.kind` = 'step' and tags.`fluxflow.step_name` = 'flow'")
    assert step_run.info.status == "FINISHED" and step_run.data.tags["fluxflow.output_dir"] == uri
    [version] = client.search_model_versions(f"name = '{MODEL}'")
    assert version.tags["fluxflow.checkpoint_uri"] == final["uri"]
    assert version.tags["fluxflow.checkpoint_sha256"] == final["sha256"]

    def generated(*source: str) -> np.ndarray:
        return generated_pixels(list(source), tmp_path / "-".join(source).replace("/", "_").replace(":", ""))

    assert np.array_equal(generated("--model", f"models:/{MODEL}/1"), generated("--checkpoint", final["uri"]))
    capsys.readouterr()
    assert cli_compare.main(["--experiment", MODEL, "--output", str(tmp_path / "compare")]) == 0
    assert "flow" in capsys.readouterr().out
