"""A registered model's version as the commands that read one name it (fluxflow-generate, fluxflow-export,
fluxflow-compare), with what is wrong said in their words before MLflow answers in its own. MLflow is imported only
by the functions that ask it, so the check of a URI costs nothing.
"""
from __future__ import annotations

PREFIX = "models:/"


def models_uri_parts(model_uri: str) -> tuple[str, str | None, str | None] | None:
    """(name, alias, version) of a `models:/` URI, alias None without `@` and version None without `/`
    (`models:/NAME` alone is how MLflow names a logged model by its id); None for any other URI."""
    if not model_uri.startswith(PREFIX):
        return None
    rest = model_uri[len(PREFIX):]
    if rest.startswith("//"):  # models:///NAME/VERSION: an empty authority, which MLflow reads as models:/NAME/VERSION
        rest = rest.lstrip("/")
    rest, at, alias = rest.partition("@")
    name, slash, version = rest.partition("/")
    return name, alias if at else None, version if slash else None


def models_uri_problem(model_uri: str) -> str | None:
    """Why `models:/NAME/VERSION` cannot name a version (VERSION not a positive integer nor `latest`: MLflow answers
    with its deprecated stages, "Invalid Model Version stage: abc. Value must be one of None, Staging, Production,
    Archived."), or None (any other URI, an alias, or `models:/NAME` alone, which MLflow reads as a logged model's
    id)."""
    parts = models_uri_parts(model_uri)
    if parts is None or parts[1] is not None or parts[2] is None:
        return None
    version = parts[2].split("/", 1)[0]  # models:/NAME/VERSION/PATH names a file of the version
    if version != "latest" and not (version.isdigit() and int(version) > 0):  # latest: MLflow's newest
        return f"{model_uri}: VERSION must be a positive integer: models:/NAME/VERSION or models:/NAME@ALIAS"
    return None


def missing_files_problem(client, name: str, version: str) -> str | None:
    """'version V of NAME: its files are missing from the artifact store (WHERE)' when nothing is found where the
    version's artifacts should be (the store's artifact folder moved away, or deleted; MLflow: "No such artifact:
    ''"), else None. `client` is an MlflowClient of the version's store."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        where = client.get_model_version_download_uri(name, version)
        listed = get_artifact_repository(where).list_artifacts("")
    # The store cannot say (MLflow's errors, an OSError, an object store's client errors such as botocore's, which
    # are neither): not known to be missing. Promotion asks it where an evaluation failed, so it must not raise.
    except Exception:
        return None
    if listed:
        return None
    return f"version {version} of {name!r}: its files are missing from the artifact store ({where})"
