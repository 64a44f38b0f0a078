"""A registered model loads where this repository is not: an environment that holds only the packages the model's
requirements.txt declares (and what they depend on) loads `models:/NAME@champion` and draws the same pixels as
`fluxflow-generate --checkpoint`, for a byte-level and a pretrained text encoder (whose directory is gone by then);
so does the folder `fluxflow-export --model` writes of it.

The environment is a new virtualenv into which pip installs the declared requirements with `--no-index` from local
wheels of this test environment's distributions (tests/wheelhouse.py): pip resolves them as from PyPI, without the
network, and nothing else of this environment comes along (not the project, whose editable install is a distribution
nobody declares).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers_tiny import TINY_MODEL, VAE_STEP, generated_pixels, tiny_raw
from PIL import Image
from pretrained_fixture import tiny_clip_dir
from wheelhouse import environment_from_wheels, wheelhouse_for

pytestmark = pytest.mark.slow
__all__ = ["tiny_clip_dir"]

FLOW_STEP = {"name": "flow", "n_epochs": 1, "max_steps": 2, "train_diff": True, "ema_decay": 0.5}
PROMPT, SEED, STEPS = "a red circle", 3, 3

# In the new environment: the project must not be importable before the model is loaded; then one image, as a PNG.
LOAD_AND_PREDICT = """
import base64, importlib.util, json, sys
assert importlib.util.find_spec("fluxflow") is None, "the project is importable without the model"
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1], model_config={"device": "cpu"})
params = {"seed": int(sys.argv[4]), "steps": int(sys.argv[5])}
frame = model.predict(pd.DataFrame({"prompt": [sys.argv[3]]}), params=params)
open(sys.argv[2], "wb").write(base64.b64decode(frame.image[0]))
import fluxflow
print(json.dumps({"fluxflow": fluxflow.__file__}))
"""


@pytest.fixture(autouse=True)
def _prefect(prefect_api):
    """The session's Prefect test API (the pipeline registers its flow step as it does in a deployment)."""


# The wheels and each fresh environment take gigabytes (torch): removed when done, since pytest keeps the temporary
# folders of the last three sessions and repeated runs would fill the disk.
@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> Path:
    """One folder of local wheels for the session's cases (torch's is built once)."""
    folder = tmp_path_factory.mktemp("wheels")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> dict:
    """The virtualenv the cases install their model's requirements into, and what has been installed into it. One
    for the module: the pretrained model declares what the byte-level one does plus transformers, so the second case
    adds transformers to the first one's environment (about 50 s less than a second torch install), which then holds
    exactly what that model declares. A case that declares less than what is there gets a new environment."""
    where = tmp_path_factory.mktemp("fresh-env") / "env"
    state = {"where": where, "declared": set()}
    yield state
    shutil.rmtree(where, ignore_errors=True)


def environment_with(environment: dict, requirements: list[str], wheels: Path) -> Path:
    """The python of an environment holding `requirements` (and what they depend on) and nothing else."""
    if not environment["declared"] <= set(requirements):
        shutil.rmtree(environment["where"], ignore_errors=True)
        environment["declared"] = set()
    python = environment_from_wheels(requirements, wheelhouse_for(requirements, wheels), environment["where"])
    environment["declared"] |= set(requirements)
    return python


def train_and_register(tmp: Path, name: str, model: dict) -> str:
    """A tiny pipeline run as the deployments run it, its flow step registered as `name` (champion: the first
    version); the flow step's checkpoint."""
    from flows.pipeline_flow import pipeline_flow

    raw = tiny_raw(tmp / "out", [VAE_STEP, FLOW_STEP], dataset_size=16, no_samples=True, model=model)
    raw["tracking"] = {"experiment_name": name}
    raw["promotion"] = {"n_images": 4, "sampler_steps": 2}
    state = pipeline_flow(raw, return_state=True)
    assert state.is_completed(), state.message
    return state.result()[-1]["ref"]["uri"]


def pixels_of(source: list[str], out: Path) -> np.ndarray:
    """`fluxflow-generate`'s image of PROMPT from `source` (--checkpoint FILE, --weights DIR)."""
    return generated_pixels(source, out, PROMPT, SEED, STEPS)


@pytest.mark.parametrize("encoder", ["byte", "pretrained"])
def test_the_champion_loads_without_this_repository_and_draws_the_checkpoints_pixels(
        encoder, tmp_path, mlflow_store, tiny_clip_dir, wheels, environment):
    from mlflow.artifacts import download_artifacts

    model = dict(TINY_MODEL)
    if encoder == "pretrained":  # a copy, removed before loading: the model must carry the encoder's directory
        clip = shutil.copytree(tiny_clip_dir, tmp_path / "clip")
        model = {k: v for k, v in TINY_MODEL.items() if k != "text_embedding_dim"}
        model["text_encoder"] = {"type": "pretrained", "path": str(clip)}
    name, uri = f"travels-{encoder}", f"models:/travels-{encoder}@champion"
    checkpoint = train_and_register(tmp_path, name, model)
    expected = pixels_of(["--checkpoint", checkpoint], tmp_path / "by-checkpoint")
    from flows import cli_export

    assert cli_export.main(["--model", uri, "--output", str(tmp_path / "exported")]) == 0  # fluxflow-export --model
    if encoder == "pretrained":
        shutil.rmtree(tmp_path / "clip")
    assert np.array_equal(pixels_of(["--weights", str(tmp_path / "exported")], tmp_path / "by-export"), expected)

    requirements = [line.strip() for line in
                    Path(download_artifacts(artifact_uri=f"{uri}/requirements.txt")).read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert ("transformers" in " ".join(requirements)) == (encoder == "pretrained")
    python = environment_with(environment, requirements, wheels)
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([str(python), "-c", LOAD_AND_PREDICT, uri, str(tmp_path / "served.png"), PROMPT, str(SEED),
                           str(STEPS)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    loaded_from = json.loads(done.stdout.strip().splitlines()[-1])["fluxflow"]
    assert not loaded_from.startswith(str(Path(__file__).resolve().parents[2]))  # the model's own copy of the code
    assert np.array_equal(np.asarray(Image.open(tmp_path / "served.png")), expected)
