"""`--version` for every command-line entry point, answered from the installed package's metadata (no imports of
torch, Prefect or MLflow: `--help` and `--version` stay instant), and the parsing they share (`parse`)."""
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


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """`parser.parse_args`, refusing an empty value (`--output-dir ""`): taken as unset or as ".", it would train,
    write or read somewhere else than asked."""
    args = parser.parse_args(argv)
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if value == "" or isinstance(value, list) and "" in value:
            parser.error(f"argument {'/'.join(action.option_strings)}: expected a value, got an empty one")
    return args
