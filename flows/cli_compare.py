"""`fluxflow-compare`: the hypotheses of an MLflow experiment, or the versions of a registered model, side by side.

The arguments are parsed and the results printed and written here; the comparisons are flows/compare.py (hypotheses)
and flows/compare_versions.py (versions), imported after parsing, so that `--help` and `--version` answer at once.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (every flows entry point: quiet and offline)

import argparse
import hashlib
import json
import os
import secrets
import sys
from pathlib import Path

from flows.cli_common import (add_version_argument, interrupted, output_file_problem, parse, put_in_place,
                              quiet_when_output_closed, refuse)
from flows.exit_codes import EXIT_OK

PROG = "fluxflow-compare"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The hypotheses of an MLflow experiment side by side: for every leaf step (its seed replicates "
                    "grouped), the config values that differ and the final smoothed metrics with their 95 % "
                    "interval, and per pair of hypotheses the difference and the verdict of a t-test (paired by "
                    "seed where both ran the same seeds, else Welch's); as tables, CSV, JSON and a PNG bar chart.",
        epilog="Exit codes: 0 written; 2 bad input (an experiment, registered model or alias that is not there, a "
               "registered model without versions or with one whose files are missing from the artifact store or "
               "that is not a fluxflow model, an --output that is a file or cannot be written); 130 interrupted "
               "(Ctrl-C: the files are renamed into place only once all are written, so an earlier comparison in "
               "--output is left as it was).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--experiment", help="MLflow experiment name: its hypotheses (leaf steps) side by side")
    which.add_argument("--registered-model", metavar="NAME", help="MLflow registered model: its versions side by "
                                                                  "side (flows/compare_versions.py)")
    # The default (None: `champion`) is flows/compare_versions.py's DEFAULT_ALIAS, written out: that module imports
    # MLflow. None tells a given --alias, which --experiment refuses, from the default.
    parser.add_argument("--alias", help="the alias marked in --registered-model's columns (default: champion; an "
                                        "alias the model does not have is an error)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI, e.g. sqlite:///PATH or http://HOST:PORT "
                                                         "(default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)")
    parser.add_argument("--output", default=".", type=os.path.expanduser,  # `~`: bash leaves it after `=`
                        help="folder for compare_<name>.csv/.png/.json, or compare_versions_<name>.csv/.png with "
                             "--registered-model (default: .)")
    add_version_argument(parser)
    return parser


@quiet_when_output_closed
def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    problem = output_file_problem(args.output)
    if args.experiment is not None and args.alias is not None:  # was ignored
        problem = "--alias marks a version of --registered-model; the hypotheses of --experiment have none"
    if problem:
        return refuse(PROG, problem)
    try:
        return run(args)
    except KeyboardInterrupt:  # Ctrl-C, while pandas or MLflow loads, the store is read or the files are drawn: one
        # line, not a traceback; the files are renamed into place once all are written, after which Ctrl-C is ignored
        return interrupted(PROG, f"nothing written to {args.output} (the files of an earlier comparison there, if "
                                 "any, are left as they were)")


def file_stem(name: str) -> str:
    """The name as a file name: letters, digits, `-` and `_` kept, anything else `_`, and then a short hash of the
    name, so that two names that differ only there (`sp ace`, `sp_ace`) do not write over each other's files."""
    kept = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
    return kept if kept == name else f"{kept}-{hashlib.sha1(name.encode('utf-8')).hexdigest()[:6]}"


def run(args) -> int:
    """`fluxflow-compare` once its arguments are parsed: write CSV, JSON and PNG, print the tables."""
    from mlflow.tracking import MlflowClient

    from flows.compare import experiment_comparison, write_csv
    from flows.compare_chart import write_chart
    from flows.compare_versions import model_comparison, model_problem
    from flows.mlflow_runs import resolve_tracking_uri, store_to_read_problem
    from flows.text_table import plain_table

    uri = args.tracking_uri or resolve_tracking_uri()
    problem = store_to_read_problem(uri)
    if problem:
        return refuse(PROG, problem)
    client = MlflowClient(uri)
    note = None
    if args.registered_model:
        # Its own file names: the registered model is named after the experiment by default, and the same names
        # made each mode overwrite the other's CSV and PNG, leaving a mismatched set next to the JSON.
        name, prefix = args.registered_model, "compare_versions_"
        alias = args.alias or "champion"
        issue = model_problem(client, name, alias)  # (what to say, whether it is an error) or None
        if issue is not None and issue[1]:
            return refuse(PROG, issue[0])
        note = issue and issue[0]
        found = model_comparison(client, name, alias)
    else:
        name, prefix = args.experiment, "compare_"
        found = experiment_comparison(client, args.experiment)
    if isinstance(found, str):
        return refuse(PROG, found)
    comparison, rows, title = found
    summary = comparison.summary
    differences = summary.difference_rows() if summary is not None and summary.differences else None
    out = Path(args.output)
    stem = prefix + file_stem(name)
    # Each file is written under a hidden temporary name beside its own, and they are renamed into place one after
    # another once every one is written: written in place one after another, a Ctrl-C (or a full disk) part way left
    # a new CSV beside an earlier comparison's PNG and JSON, which disagree with it.
    token = secrets.token_hex(4)
    staged: dict[Path, Path] = {}

    def staging(path: Path) -> Path:
        staged[path] = out / f".{path.stem}.{os.getpid()}.{token}.partial{path.suffix}"  # savefig reads the suffix
        return staged[path]
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(rows, staging(out / f"{stem}.csv"))
        write_chart(comparison, staging(out / f"{stem}.png"), title)
        if differences:
            write_csv(differences, staging(out / f"{stem}_differences.csv"))
        if summary is not None:
            staging(out / f"{stem}.json").write_text(json.dumps(summary.to_dict(), indent=1) + "\n")
        put_in_place(lambda: publish(staged, [out / f"{stem}_differences.csv", out / f"{stem}.json"]))
    except OSError as exc:  # a folder that cannot be made or written: was a traceback
        return refuse(PROG, exc, args.output)
    finally:
        for temporary in staged.values():  # left only when stopped before the renames
            temporary.unlink(missing_ok=True)
    # Printed once the files are written: `| head` stops reading, and the files are there all the same.
    print(plain_table(rows))
    if differences:
        print(f"\n{plain_table(differences)}")
    if summary is not None:
        print(f"\n{summary.note()}")
    if note:
        print(f"\nNote: {note}")
    print(f"\nWrote {', '.join(map(str, staged))}")
    return EXIT_OK


def publish(staged: dict[Path, Path], optional: list[Path]) -> None:
    """Renames each temporary file of `staged` (final path: temporary) to its final path, and removes the files of
    `optional` that were not written this time: an earlier comparison's, which would no longer agree."""
    for final, temporary in staged.items():
        os.replace(temporary, final)
    for left in set(optional) - set(staged):
        left.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
