"""`fluxflow-compare`: the hypotheses of an MLflow experiment, or the versions of a registered model, side by side.

The arguments are parsed here, before MLflow is imported (flows/compare.py, flows/compare_versions.py), so that
`--help` and `--version` answer at once.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (every flows entry point: quiet and offline)

import argparse
import sys

from flows.cli_version import add_version_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluxflow-compare",
        description="The hypotheses of an MLflow experiment side by side: for every leaf step (its seed replicates "
                    "grouped), the config values that differ and the final smoothed metrics with their 95 % "
                    "interval, and per pair of hypotheses the difference and Welch's t-test verdict; as tables, "
                    "CSV, JSON and a PNG bar chart.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", help="MLflow experiment name: its hypotheses (leaf steps) side by side")
    which.add_argument("--registered-model", metavar="NAME", help="MLflow registered model: its versions side by "
                                                                  "side (flows/compare_versions.py)")
    parser.add_argument("--alias", default="champion", help="the alias marked in --registered-model's columns")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI or ./mlflow.db)")
    parser.add_argument("--output", default=".", help="folder for compare_<name>.csv/.png/.json (default: .)")
    add_version_argument(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from flows.compare import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
