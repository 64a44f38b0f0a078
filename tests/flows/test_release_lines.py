"""The closing `Model:` lines of `fluxflow-train` (flows/promotion.py, release_lines) after runs into one output
directory: the versions of the checkpoints in place, and the earlier ones apart. A stand-in MLflow client: no store."""
from __future__ import annotations

import json
from types import SimpleNamespace

from helpers_tiny import tiny_config

from flows.mlflow_names import TAG_CHECKPOINT_SHA256, TAG_PROMOTION, TAG_STEP_NAME
from flows.promotion import release_lines
from fluxflow.checkpoints.step_files import plan_step

STEPS = [{"name": "warm", "n_epochs": 1, "max_steps": 2, "train_vae": True},
         {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff": True, "freeze": ["compressor", "expander"]}]


class Registry:
    """search_model_versions and get_model_version_by_alias, over a list of versions."""

    def __init__(self, versions, champion):
        self.versions, self.champion = versions, champion

    def search_model_versions(self, where):
        return list(self.versions)

    def get_model_version_by_alias(self, name, alias):
        return next(v for v in self.versions if v.version == self.champion)


def version(number: str, sha: str, decision: str):
    return SimpleNamespace(version=number, tags={TAG_STEP_NAME: "flow", TAG_CHECKPOINT_SHA256: sha,
                                                 TAG_PROMOTION + "decision": decision})


def test_versions_of_checkpoints_no_longer_in_place_are_not_listed_as_this_runs(tmp_path):
    # Three runs into one directory (flow's lr changed twice): versions 1 and 2 are of checkpoints set aside since.
    config = tiny_config(tmp_path / "out", STEPS)
    flow = plan_step(config, "flow")
    flow.dir.mkdir(parents=True)
    flow.final.write_bytes(b"weights")
    ref = {"uri": str(flow.final), "sha256": "c" * 64, "step_name": "flow", "step_key": flow.key, "global_step": 4,
           "epoch": 2}
    flow.ref_json.write_text(json.dumps({"ref": ref, "result": {"step_name": "flow", "outcome": "epochs_done",
                                                               "epochs_done": 1}}))
    client = Registry([version("1", "a" * 64, "promoted"), version("2", "b" * 64, "not promoted"),
                       version("3", "c" * 64, "not promoted")], champion="1")

    lines = release_lines(client, config, str(tmp_path / "out"))

    name = config.tracking.model_name
    assert lines == [f"Model:       {name} version 3 (step flow): not promoted",
                     f"Earlier:     {name} versions 1, 2, of checkpoints this output directory no longer holds in "
                     "place (set aside or deleted), or of steps this config does not register",
                     f"Champion:    models:/{name}@champion is version 1"]
