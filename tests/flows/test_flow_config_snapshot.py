"""Each task of the flow trains the config the flow resolved at its start, not the YAML file as it is when the task
starts: a file edited while a run is in progress must not change what its later steps train."""
from __future__ import annotations

import copy
import json

import pytest
import yaml
from helpers_tiny import tiny_raw
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow

VAE = {"n_epochs": 1, "max_steps": 2, "train_vae": True, "kl_beta": 0.25}


def test_a_yaml_edited_while_the_flow_runs_changes_nothing_it_trains(tmp_path, prefect_api, mlflow_store,
                                                                        monkeypatch):
    import fluxflow.train.pipeline as step_entry  # train_step, which every step task calls, calls its run_step
    from flows.pipeline_flow import pipeline_flow

    out = tmp_path / "out"
    raw = tiny_raw(out, [{"name": "first", **VAE}, {"name": "second", **VAE}], dataset_size=16,
                   no_samples=True)
    raw["tracking"] = {"experiment_name": "edited"}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    edited = copy.deepcopy(raw)
    edited["training"]["pipeline"]["steps"][1].update(kl_beta=0.75, max_steps=3)

    real_run_step = step_entry.run_step

    def edit_the_file_then_run(config, step_name, *args, **kwargs):
        if step_name == "first":  # the first task has started: the user edits the file now
            path.write_text(yaml.safe_dump(edited))
        return real_run_step(config, step_name, *args, **kwargs)

    monkeypatch.setattr(step_entry, "run_step", edit_the_file_then_run)
    state = pipeline_flow(str(path), return_state=True)
    assert state.is_completed(), state.message
    assert yaml.safe_load(path.read_text()) == edited  # the edit did happen during the run

    second = json.loads((out / "checkpoints" / "second" / "ref.json").read_text())
    assert second["step_config"]["kl_beta"] == 0.25
    assert second["step_config"]["max_steps"] == 2
    assert second["ref"]["global_step"] == 4  # 2 batches of its own after the first step's 2, not 3
    client = MlflowClient()
    experiment = client.get_experiment_by_name("edited").experiment_id
    [run] = client.search_runs([experiment], "tags.`fluxflow.step_name` = 'second'")
    assert (run.data.params["kl_beta"], run.data.params["max_steps"]) == ("0.25", "2")
