"""`--version` for every command-line entry point, answered from the installed package's metadata (no imports of
torch, Prefect or MLflow: `--help` and `--version` stay instant)."""
from __future__ import annotations

import argparse
from importlib.metadata import PackageNotFoundError, version

DISTRIBUTION = "fluxflow-pipelines"  # pyproject.toml's [project] name


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
