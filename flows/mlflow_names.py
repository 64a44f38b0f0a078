"""The names this product gives things in MLflow, and the one way to filter on them.

Every tag, key prefix and filter lives here, so a search in one module finds what another module wrote. Tags on
runs say what a run is (a pipeline or a step, of which output directory, step key and session); tags on registered
versions say where the version came from and how its promotion went.
"""
from __future__ import annotations

# Runs (flows/mlflow_runs.py, flows/mlflow_step_run.py, flows/pipeline_flow.py)
TAG_KIND = "fluxflow.kind"  # "pipeline" | "step"
TAG_OUTPUT_DIR = "fluxflow.output_dir"
TAG_STEP_KEY = "fluxflow.step_key"
TAG_STEP_NAME = "fluxflow.step_name"  # on step runs and on registered versions
TAG_PARENT_STEP = "fluxflow.parent_step"
TAG_SESSION = "fluxflow.session"
TAG_OUTCOME = "fluxflow.outcome"
TAG_OVERRIDES = "fluxflow.overrides"  # the pipeline run's `--set KEY=VALUE` list, as JSON
TAG_CONFIG_HASH = "fluxflow.config_hash"
TAG_STEPS = "fluxflow.steps"
TAG_BRANCHES = "fluxflow.branches"
TAG_LEAVES = "fluxflow.leaves"  # the pipeline's leaf steps (JSON: step -> its hypothesis): what compare expects
TAG_EPOCHS_DONE = "fluxflow.epochs_done"
TAG_GLOBAL_STEP = "fluxflow.global_step"
TAG_CHECKPOINT_URI = "fluxflow.checkpoint_uri"  # on step runs and on registered versions
TAG_RESUMED_FROM = "fluxflow.resumed_from"
TAG_SUPERSEDED_BY = "fluxflow.superseded_by"  # on the older runs of a step (its config changed): the run replacing them
TAG_RAY_NODE = "fluxflow.ray_node_id"  # where the step trained (the Ray executor only): tags, since a resumed step
TAG_HOSTNAME = "fluxflow.hostname"  # may train on another node than it started on
TAG_WORKERS = "fluxflow.ray_train_workers"  # a step across nodes: each rank's node (StepOutcome.workers, as JSON)
TAG_DECISION_OF_RUN = "fluxflow.promotion"  # on the pipeline's run: one line per promotion decision
TAG_VERSION_OF_RUN = "fluxflow.registered_model_version"  # on the step's run: "<name>/<version>"
TAG_CREATED_BY = "fluxflow.created_by"  # a nonce per create_run call: its twins (a resent request) share it
TAG_WARNING = "fluxflow.warning."  # + a warning's key (the flat discriminator): its message, on the step's run
PARENT_RUN_ID = "mlflow.parentRunId"  # MLflow's own: a nested run's parent
FINAL_PREFIX = "final/"  # a step's final metrics, as metrics of its run and of its logged model

# Registered versions (flows/registry.py, flows/promotion.py)
TAG_CHECKPOINT_SHA256 = "fluxflow.checkpoint_sha256"
TAG_PIPELINE_RUN = "fluxflow.pipeline_run_id"
TAG_PROMOTION = "fluxflow.promotion."  # + decision, reason, metric, value, champion, ...: flows/promotion.py
# Tags of the pipeline's MLflow run that every version of it carries too.
LINEAGE_TAGS = ("prefect.flow_run_id", "prefect.flow_run_name", "prefect.flow_run_url", TAG_CONFIG_HASH,
                TAG_OUTPUT_DIR)


def quoted(value: str) -> str:
    """A string literal for an MLflow filter (runs and model versions alike). MLflow's parser knows no escapes (a
    backslash-escaped quote matches nothing: measured on MLflow 3.17), so a value with a single quote goes in double
    quotes; one with both kinds cannot be searched for."""
    value = str(value)
    return f'"{value}"' if "'" in value else f"'{value}'"


def tags_filter(tags: dict[str, str]) -> str:
    """An MLflow filter matching runs or versions that carry all `tags`."""
    return " and ".join(f"tags.`{key}` = {quoted(value)}" for key, value in tags.items())
