"""`fluxflow-compare --registered-model NAME`: the versions of a registered model side by side, oldest first, the one
holding `champion` marked: where each came from (step, Prefect flow run, date), how its promotion went, the config
values that differ between versions and each version's final metrics. Same table, CSV and chart as the hypotheses
comparison (flows/compare.py), one column per version.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede mlflow)

from datetime import datetime, timezone

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pydantic import ValidationError

from flows.compare import MISSING, Comparison, differing, stored_value, table_rows
from flows.mlflow_names import FINAL_PREFIX, TAG_PROMOTION, TAG_STEP_NAME
from flows.mlflow_runs import flatten_params
from flows.model_uri import missing_files_problem
from flows.registry import RegistryError, no_versions_problem, tracking_at, version_by_alias, versions_of
from fluxflow.config.run_config import run_config_of
from fluxflow.wording import counted

# The alias promotion moves unless the config names another (promotion.alias, fluxflow/config/promotion.py).
DEFAULT_ALIAS = "champion"
CONFIG_FILE = "artifacts/config.json"  # the resolved config, an artifact of every version (flows/registry.py)
# Differences that every pair of nights has and that say nothing about the model.
NOT_DIFFERENCES = ("output.output_path",)


def unreadable_version(client: MlflowClient, name: str, version: str, exc: MlflowException) -> str:
    """One line on why the version's config.json could not be read (`exc`, MLflow's error reading it)."""
    missing = missing_files_problem(client, name, version)
    if missing:  # the store's artifact folder moved away or was deleted
        return missing
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # its files are there, without a config (registered by hand)
        return f"version {version} of {name!r} is not a fluxflow model: it has no {CONFIG_FILE} " \
               f"({client.get_model_version_download_uri(name, version)})"
    last = (exc.message.strip().splitlines() or [""])[-1]  # MLflow's lines: the file's own error is the last
    return f"version {version} of {name!r}: cannot read its {CONFIG_FILE}: {last}"


def version_metrics(client: MlflowClient, version) -> dict[str, float]:
    """The version's final smoothed metrics (its step's `final/*`, linked to the model at registration)."""
    # The logged model behind the version: search results leave `model_id` empty; the source is `models:/<id>`.
    source = version.source or ""
    model_id = version.model_id or (source.split("/", 1)[1] if source.startswith("models:/") else None)
    metrics = client.get_logged_model(model_id).metrics if model_id else []
    return {m.key[len(FINAL_PREFIX):]: stored_value(m.value) for m in metrics or [] if m.key.startswith(FINAL_PREFIX)}


def version_config(client: MlflowClient, name: str, version) -> dict[str, str]:
    """The config the version was trained with, flattened like run params, each step under its name
    (`steps.flow.lr`) rather than as one list, with the values it trained at: a step that inherits its lr from
    `training.lr` or the defaults shows that lr (it showed '-', as if the versions differed where they did not)."""
    with tracking_at(client.tracking_uri):  # load_dict: downloaded into a temporary folder that it removes again
        try:
            config = mlflow.artifacts.load_dict(f"models:/{name}/{version.version}/{CONFIG_FILE}")
        except MlflowException as exc:  # was a traceback (exit 1)
            raise RegistryError(unreadable_version(client, name, str(version.version), exc)) from None
    try:
        steps = [step.model_dump(mode="json") for step in run_config_of(config).written_steps()]
    except ValidationError:  # a config this version of the product no longer reads: its steps as written
        steps = config["training"]["pipeline"]["steps"]
    config["training"]["pipeline"].pop("steps")
    return {**flatten_params(config), **flatten_params({step["name"]: step for step in steps}, prefix="steps.")}


def info_rows(versions: list) -> list[list[str]]:
    """Where each version came from and what its promotion decided."""
    def tag(key: str):
        return [v.tags.get(key, MISSING) for v in versions]

    runs = [v.run_id or MISSING for v in versions]
    created = [datetime.fromtimestamp(v.creation_timestamp / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M")
               for v in versions]
    rows = [["step", *tag(TAG_STEP_NAME)], ["registered (UTC)", *created],
            ["prefect flow run", *tag("prefect.flow_run_name")], ["mlflow run", *runs],
            ["promotion", *tag(TAG_PROMOTION + "decision")], ["promotion reason", *tag(TAG_PROMOTION + "reason")]]
    # One row per metric promotion decided on (`promotion.metric` may change between runs): a value under another
    # metric's name was a wrong number.
    metrics = [v.tags.get(TAG_PROMOTION + "metric") for v in versions]
    for metric in dict.fromkeys(m for m in metrics if m):
        rows.append([f"promotion {metric}", *(value if m == metric else MISSING
                                              for value, m in zip(tag(TAG_PROMOTION + "value"), metrics))])
    return rows


def model_problem(client: MlflowClient, name: str, alias: str) -> tuple[str, bool] | None:
    """None when the model exists and a version holds `alias`; else (what to say, whether it is an error). An alias
    the model does not have is a typo (before, it was accepted and nothing was marked); the default alias not set
    yet is a model whose promotion has not promoted a version, which the comparison still shows."""
    if problem := no_versions_problem(client, name):  # nothing to compare: was a table of row names, exit 0
        return f"{problem} (tracking URI {client.tracking_uri})", True
    aliases = client.get_registered_model(name).aliases  # search results carry no aliases
    if alias in aliases:
        return None
    held = ", ".join(sorted(aliases)) or "none"
    if alias == DEFAULT_ALIAS and aliases:  # promoted under the alias its config names (promotion.alias: prod)
        return f"no version of {name!r} holds the alias {alias!r} (its aliases: {held}; --alias NAME marks the " \
               "version holding one)", False
    if alias == DEFAULT_ALIAS:
        return f"no version of {name!r} holds the alias {alias!r} yet (none has been promoted)", False
    return f"registered model {name!r} has no alias {alias!r} (its aliases: {held})", True


def model_comparison(client: MlflowClient, name: str, alias: str) -> tuple[Comparison, list[list[str]], str] | str:
    """(comparison, rows, chart title) of every version of the registered model: the header, the rows about their
    origin and promotion, then the config differences and metrics (model_problem says what is wrong first); or, in
    one line, why a version cannot be compared (its files missing, or not a fluxflow model)."""
    versions = versions_of(client, name)
    try:
        configs = [version_config(client, name, v) for v in versions]
    except RegistryError as exc:
        return str(exc)
    champion = version_by_alias(client, name, alias)  # search results carry no aliases
    holder = str(champion.version) if champion is not None else ""
    labels = [f"v{v.version}" + (f" ({alias})" if str(v.version) == holder else "") for v in versions]
    finals = [version_metrics(client, v) for v in versions]
    comparison = Comparison(labels, differing(configs, NOT_DIFFERENCES),
                            {key: [metrics.get(key) for metrics in finals] for key in sorted(set().union(*finals))})
    rows = table_rows(comparison)
    title = f"{name}: final metrics of {counted(len(versions), 'version')}"
    return comparison, [rows[0], *info_rows(versions), *rows[1:]], title
