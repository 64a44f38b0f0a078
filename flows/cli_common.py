"""What every command-line entry point does alike, importing nothing of torch, Prefect or MLflow (`--help` and
`--version` stay instant): `--version` from the package's metadata, `parse`, the one line of a refusal (`refuse`, and
the checks of --output) and the quiet end when the output is closed (`quiet_when_output_closed`)."""
from __future__ import annotations

import argparse
import functools
import os
import select
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from flows.exit_codes import EXIT_FIX_INPUT, EXIT_OUTPUT_CLOSED

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


def output_file_problem(output: str) -> str | None:
    """Says so when --output, or a folder above it, is an existing file: the folder could not be made there."""
    path = Path(output)
    blocking = next((p for p in (path, *path.parents) if p.exists()), path)
    if blocking.exists() and not blocking.is_dir():
        under = "" if blocking == path else f" is under {blocking}, which"
        return f"--output {output}{under} is a file, not a folder"
    return None


def refuse(prog: str, problem: str | BaseException, output: str | None = None) -> int:
    """Prints `prog: problem`; returns the exit code of an input to fix. An OSError about --output `output` (the
    folder, a folder above it that could not be made, a file in it, or the folder beside it an export is staged in) is
    said with the flag: '--output /proc/nope/x cannot be written (No such file or directory: /proc/nope)'; before,
    only the OS's words and the path (a staging folder's hidden name, which the user never gave)."""
    failed = getattr(problem, "filename", None) if output is not None and isinstance(problem, OSError) else None
    if failed:
        failed_path, output_path = os.path.abspath(failed), os.path.abspath(output)
        # above it, below it, or the hidden folder beside it that an export is staged in (`.NAME.*.partial`)
        staged = (os.path.dirname(failed_path) == os.path.dirname(output_path)
                  and os.path.basename(failed_path).startswith(f".{os.path.basename(output_path)}."))
        if staged or os.path.commonpath([failed_path, output_path]) in (failed_path, output_path):
            where = (os.path.dirname(failed) or ".") if staged else failed  # the folder it is made in
            problem = f"--output {output} cannot be written ({problem.strerror or problem}: {where})"
    print(f"{prog}: {problem}", file=sys.stderr)
    return EXIT_FIX_INPUT


def quiet_when_output_closed(main):
    """A CLI's `main`, ending quietly with exit 141 (the shell's code for SIGPIPE) when the reader of its output has
    gone (`fluxflow-train ... --validate-pipeline | head -1`): before, Python printed the BrokenPipeError's traceback,
    or "Exception ignored ... BrokenPipeError" when the output was flushed at exit. SIGPIPE itself stays ignored, as
    Python sets it: a connection to Prefect or MLflow that breaks must raise, not kill the run. A BrokenPipeError
    while stdout and stderr still have their reader (a socket's) is raised as it is."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        try:
            try:
                return main(argv)
            finally:
                sys.stdout.flush()  # here, not at exit: what `head` did not read fails now, where it is caught
        except BrokenPipeError:
            closed = [stream for stream in (sys.stdout, sys.stderr) if _reader_gone(stream)]
            if not closed:
                raise
            devnull = os.open(os.devnull, os.O_WRONLY)
            for stream in closed:  # what is still buffered, and the exit handlers' lines, go nowhere
                os.dup2(devnull, stream.fileno())
            os.close(devnull)
            return EXIT_OUTPUT_CLOSED
    return run


def _reader_gone(stream) -> bool:
    """Whether `stream` is a pipe whose reading end is closed (poll reports an error on it)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # pytest's capture, a closed stream
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & select.POLLERR for _, event in poller.poll(0))
