"""MLflow Model Registry: a pipeline step's final checkpoint as a version of a registered model, and back to a file.

A version is an MLflow model logged to the step's MLflow run (a pyfunc: flows/pyfunc_model.py) with the checkpoint, its
export (fluxflow/sampling/export.py: the sampling weights, and a pretrained text encoder's directory) and the resolved
config as its artifacts, the checkpoint reference (URI + sha256) and final metrics as its metadata, the step's final
metrics linked to it, and tags that lead back to where it came from:

    model version --run_id--> the step's MLflow run --mlflow.parentRunId--> the pipeline's run
                  --prefect.flow_run_id / prefect.flow_run_url--> the Prefect flow run that trained it

A checkpoint is registered once per model name: registering the same file again (a re-run that found the step
complete) returns the version it already is.

A version loads anywhere: the project's code (fluxflow/ and flows/) travels with it as MLflow code paths, its
requirements name every package the model imports (pinned to this environment's versions, transformers too for a
pretrained text encoder), and the export holds every file the model reads. The loading environment needs those
requirements only, not this repository (tests/e2e/test_model_travels.py loads one in an environment without it).
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede mlflow)

import contextlib
import json
import os
import re
import sys
import tempfile
import uuid
from importlib import metadata
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from flows.mlflow_names import (LINEAGE_TAGS, TAG_CHECKPOINT_SHA256, TAG_CHECKPOINT_URI, TAG_CREATED_BY,
                                 TAG_GLOBAL_STEP, TAG_PIPELINE_RUN, TAG_STEP_NAME, TAG_VERSION_OF_RUN, quoted,
                                 tags_filter)
from flows.mlflow_runs import resolve_tracking_uri, store_to_read_problem
from flows.model_uri import PREFIX, models_uri_parts
from flows.pyfunc_model import CHECKPOINT_ARTIFACT, CONFIG_ARTIFACT, PROMPT, SIGNATURE, WEIGHTS_ARTIFACT
from fluxflow.checkpoints.ref import StepOutcome
from fluxflow.config.file_checks import pretrained_text_path

TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
MODEL_IN_RUN = "model"  # the logged model's name within its run
PYFUNC_CODE = Path(__file__).with_name("pyfunc_code.py")
# What the model's code imports, pinned to this environment's versions (the model's requirements.txt): with these
# installed, and nothing of this repository, the model loads and predicts. Serving with `--env-manager local` uses
# this environment as it is; the list says what another environment needs.
REQUIREMENTS = ("torch", "torchvision", "numpy", "pillow", "pandas", "pydantic", "pyyaml", "fsspec", "tqdm",
                "safetensors", "mlflow")
PRETRAINED_REQUIREMENTS = ("transformers",)  # the `pretrained` extra, for a model with a pretrained text encoder
# The project's code, logged with every version (MLflow puts it on sys.path where the model is loaded).
PROJECT_CODE = [str(Path(__file__).resolve().parents[1] / package) for package in ("fluxflow", "flows")]


class RegistryError(Exception):
    """A model URI that names no registered model, version or alias, or a model that is not a fluxflow checkpoint."""


@contextlib.contextmanager
def tracking_at(uri: str):
    """MLflow's model functions (logging a model, `models:/` URIs, downloads) read the process-wide tracking URI, not
    a client's: point it at `uri` for the block. `_use_tracking_uri` is MLflow 3.17's own helper for this, but on the
    way out it deletes MLFLOW_TRACKING_URI from the environment (it sets the variable for subprocesses, then unsets
    it): put the caller's value back."""
    saved = os.environ.get(TRACKING_URI_VARIABLE)
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop(TRACKING_URI_VARIABLE, None)
        else:
            os.environ[TRACKING_URI_VARIABLE] = saved


def versions_of(client: MlflowClient, name: str, tags: dict[str, str] | None = None) -> list:
    """The versions of `name`, oldest first ([] when the model does not exist); with `tags`, only those carrying
    them."""
    where = f"name = {quoted(name)}"
    if tags:
        where += f" and {tags_filter(tags)}"
    return sorted(client.search_model_versions(where), key=lambda v: int(v.version))


def no_versions_problem(client: MlflowClient, name: str) -> str | None:
    """Why `name` has nothing to read (no such registered model, or one without versions), or None."""
    if versions_of(client, name):
        return None
    if not client.search_registered_models(f"name = {quoted(name)}"):
        return f"no registered model named {name!r}"
    return f"registered model {name!r} has no versions"


def version_by_alias(client: MlflowClient, name: str, alias: str):
    """The version holding `alias`, or None (no such model yet, or no version holds it)."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def ensure_registered_model(client: MlflowClient, name: str) -> None:
    try:
        client.get_registered_model(name)
    except MlflowException:
        with contextlib.suppress(MlflowException):  # another process created it between the two calls
            client.create_registered_model(name, description="Text-to-image models trained by FluxFlow pipelines: "
                                                             "each version is one step's final checkpoint.")


@contextlib.contextmanager
def deleted_if_interrupted(client: MlflowClient, model_id: str):
    """The logged model being logged and made a version in the block is deleted if a Ctrl-C or SIGTERM stops it:
    MLflow marks it FAILED on an Exception only, and left PENDING (no artifacts, no version), or READY without a
    version, it stayed in the step run's models for good, beside the one the re-run logs."""
    from prefect.exceptions import TerminationSignal

    try:
        yield
    except (KeyboardInterrupt, TerminationSignal):
        with contextlib.suppress(Exception):
            client.delete_logged_model(model_id)
        raise


def register_step(client: MlflowClient, name: str, outcome: StepOutcome, config, pipeline_run_id: str):
    """The version of `name` holding this step's final checkpoint: logged to the step's run and registered, or the
    version it already is."""
    from fluxflow.sampling.export import export_weights  # torch: only when registering
    from fluxflow.sampling.generate import load_text_to_image
    from fluxflow.storage.fetch import local_copy

    ref, result = outcome
    found = versions_of(client, name, {TAG_CHECKPOINT_SHA256: ref.sha256})
    if found:  # the versions registered from a checkpoint with this content hash: the first is this one
        return found[0]
    run = client.get_run(outcome.run_id)
    pipeline_tags = client.get_run(pipeline_run_id).data.tags
    tags = {TAG_STEP_NAME: ref.step_name, TAG_CHECKPOINT_URI: ref.uri, TAG_CHECKPOINT_SHA256: ref.sha256,
            TAG_PIPELINE_RUN: pipeline_run_id, TAG_GLOBAL_STEP: str(ref.global_step),
            **{key: pipeline_tags[key] for key in LINEAGE_TAGS if pipeline_tags.get(key)}}
    described = {"checkpoint": ref.to_dict(), "final_metrics": result.final_metrics, "lineage": tags}
    with tempfile.TemporaryDirectory() as tmp, tracking_at(client.tracking_uri):
        config_file = Path(tmp) / "config.json"
        config_file.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
        checkpoint = local_copy(ref.uri, ref.sha256)  # on an object store: downloaded once, its sha256 checked
        model = load_text_to_image(checkpoint, device="cpu")
        weights = export_weights(model, Path(tmp) / WEIGHTS_ARTIFACT,
                                 source={"checkpoint": ref.uri, "sha256": ref.sha256})
        pretrained = pretrained_text_path(model.model_config) is not None  # its requirements: transformers too
        requirements = REQUIREMENTS + (PRETRAINED_REQUIREMENTS if pretrained else ())
        # Created here, in the run's experiment: left to Model.log it would land in the default experiment.
        logged = client.create_logged_model(run.info.experiment_id, MODEL_IN_RUN, run.info.run_id,
                                            params=run.data.params, model_type="text-to-image")
        with deleted_if_interrupted(client, logged.model_id):
            info = Model.log(
                None, name=MODEL_IN_RUN, flavor=mlflow.pyfunc, run_id=run.info.run_id, model_id=logged.model_id,
                python_model=str(PYFUNC_CODE),
                artifacts={CHECKPOINT_ARTIFACT: str(checkpoint), CONFIG_ARTIFACT: str(config_file),
                           WEIGHTS_ARTIFACT: str(weights)},
                code_paths=PROJECT_CODE,
                signature=SIGNATURE, input_example=pd.DataFrame({PROMPT: list(config.output.sample_captions[:1])}),
                pip_requirements=[f"{name}=={metadata.version(name)}" for name in requirements],
                metadata={"fluxflow": described}, model_config={"device": "auto"},
                step=ref.global_step,  # links the step's final metrics (logged at its last global step) to the model
            )
            # in the block too: a model logged but not made a version is the same orphan (the re-run logs another)
            ensure_registered_model(client, name)
            version = create_version_once(
                client, name, tags, source=info.model_uri, run_id=outcome.run_id, model_id=info.model_id,
                description=f"Step {ref.step_name}, {ref.uri} (sha256 {ref.sha256[:12]})")
    client.set_tag(outcome.run_id, TAG_VERSION_OF_RUN, f"{name}/{version.version}")
    return version


def create_version_once(client: MlflowClient, name: str, tags: dict[str, str], **kwargs):
    """`create_model_version`, without a twin: as `create_run_once` (flows/mlflow_runs.py), a request resent after its
    answer was lost makes a second version of the same checkpoint; the twins sharing this call's nonce, other than
    the version the answer named, are deleted."""
    nonce = uuid.uuid4().hex
    version = client.create_model_version(name, tags={**tags, TAG_CREATED_BY: nonce}, **kwargs)
    for twin in versions_of(client, name, {TAG_CREATED_BY: nonce}):
        if twin.version != version.version:
            client.delete_model_version(name, twin.version)
    return version


def model_checkpoint(model_uri: str, tracking_uri: str, into: Path) -> Path:
    """The checkpoint file of a registered model (`models:/<name>@<alias>`, `models:/<name>/<version>`) or any
    other MLflow model URI of a fluxflow pyfunc, checked against the sha256 recorded at registration. A model in a
    local store is read where it is; one behind a tracking server or on object storage is copied into the existing
    folder `into`, which the caller removes (without a destination MLflow copies it into a new temporary folder
    that nobody deletes, one per call)."""
    from fluxflow.checkpoints.io import sha256_file

    try:
        with tracking_at(tracking_uri):
            # One resolution of the URI (for models:/, a registry request): what mlflow.artifacts.download_artifacts
            # does, with the repository at hand to tell where the artifacts are (models:/ wraps the version's).
            repo = get_artifact_repository(model_uri)
            on_disk = isinstance(getattr(repo, "repo", repo), LocalArtifactRepository)
            local = Path(repo.download_artifacts("", dst_path=None if on_disk else str(into)))
        model = Model.load(str(local))  # a folder that is not an MLflow model (no MLmodel file) raises here
    except MlflowException as exc:
        raise RegistryError(f"{model_uri}: {exc.message} (tracking URI {tracking_uri})") from None
    artifacts = model.flavors.get("python_function", {}).get("artifacts") or {}
    if CHECKPOINT_ARTIFACT not in artifacts:
        raise RegistryError(f"{model_uri} is not a fluxflow text-to-image model (no '{CHECKPOINT_ARTIFACT}' artifact)")
    path = local / artifacts[CHECKPOINT_ARTIFACT]["path"]
    expected = ((model.metadata or {}).get("fluxflow") or {}).get("checkpoint", {}).get("sha256")
    if expected and sha256_file(path) != expected:
        raise RegistryError(f"{model_uri}: the checkpoint {path} does not match the sha256 recorded at registration "
                            f"({expected}): the copy is damaged")
    return path


def served_model_problem(model_uri: str, tracking_uri: str,
                         names: str = "--tracking-uri or MLFLOW_TRACKING_URI") -> str | None:
    """Why `mlflow models serve -m MODEL_URI` would not find its model, in one line, or None (scripts/serve_model.sh
    asks first: the server's own answer is a traceback in its log, after the script said "started", and a fresh
    checkout has no champion until a pipeline with a flow step has run). A `models:/` URI of any form (alias,
    version, `latest`, a stage, a logged model's id) is resolved in the store; a plain path (or file: URI) must exist;
    other URIs (runs:/, s3://, mlflow-artifacts:/, dbfs:/, ...) are the server's to read. `names`: what names the
    store, for the hint."""
    if not model_uri.startswith(PREFIX):
        scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", model_uri)
        if scheme is None or scheme.group().lower() == "file:":
            path = Path(model_uri.removeprefix("file://").removeprefix("file:"))
            if not path.exists():
                return f"{model_uri}: no such file or folder; name a model folder or a models:/NAME@ALIAS URI"
        return None
    problem = store_to_read_problem(tracking_uri, names)
    if problem:
        return f"{model_uri}: {problem}"
    name, alias, version = models_uri_parts(model_uri)
    hint = "a pipeline with a flow step registers its model (make demo: fluxflow-quickstart)"
    client = MlflowClient(tracking_uri)
    try:
        if alias is not None:
            client.get_model_version_by_alias(name, alias)
        elif (version or "").isdigit():
            client.get_model_version(name, version)
        else:  # `latest`, a stage, a logged model's id: as the server resolves it
            with tracking_at(tracking_uri):
                get_artifact_repository(model_uri)
    except MlflowException as exc:
        return f"{model_uri}: {exc.message} (tracking URI {tracking_uri}); {hint}"
    return None


if __name__ == "__main__":  # python -m flows.registry MODEL_URI [NAMES]: scripts/serve_model.sh's check; NAMES are
    # the settings that name the store, for the hint (the script's own variables, not the CLIs' --tracking-uri)
    found = served_model_problem(sys.argv[1], resolve_tracking_uri(), *sys.argv[2:3])
    if found:
        print(f"❌ {found}", file=sys.stderr)
    sys.exit(2 if found else 0)
