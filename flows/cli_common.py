"""What every command-line entry point does alike (`--version`, parsing, refusals, a closed output, Ctrl-C),
importing nothing of torch, Prefect or MLflow: `--help` and `--version` stay instant."""
from __future__ import annotations

import argparse
import functools
import os
import select
import signal
import sys
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from flows.exit_codes import EXIT_FIX_INPUT, EXIT_INTERRUPTED, EXIT_OUTPUT_CLOSED

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
    write or read somewhere else than asked; and a value that is not UTF-8 text (`not_utf8`), in one line and exit 2,
    as the epilogs promise."""
    args = parser.parse_args(argv)
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        values = value if isinstance(value, list) else [value]
        flag = "/".join(action.option_strings)
        if "" in values:
            parser.error(f"argument {flag}: expected a value, got an empty one")
        if shown := next(filter(None, (not_utf8(v) for v in values if isinstance(v, str))), None):
            parser.exit(refuse(parser.prog, f"{flag} is not valid UTF-8 text: {shown}"))
    return args


def not_utf8(value: str) -> str | None:
    """None for UTF-8 text; else `value` up to its first byte that is not UTF-8, that byte written \\xNN. Such a
    byte in an argument (a prompt from a Latin-1 file through `$(cat ...)`) reaches Python as a lone surrogate, which
    every later encode refuses: a traceback from the prompt encoder, MLflow's SQL store or Prefect's client (a path
    too: the flow's parameters are JSON)."""
    try:
        value.encode("utf-8")
        return None
    except UnicodeEncodeError as exc:
        start = max(0, exc.start - 40)  # enough of the text before it to find it
        shown = os.fsencode(value[start:exc.start + 1]).decode("utf-8", "backslashreplace")
        return ("..." if start else "") + shown


def output_file_problem(output: str) -> str | None:
    """Says so when --output, or a folder above it, is an existing file, or a link to nothing: the folder could not
    be made there (for the link, mkdir and rename said only "File exists" or "Not a directory")."""
    path = Path(output)
    blocking = next((p for p in (path, *path.parents) if os.path.lexists(p)), path)
    if blocking.is_symlink() and not blocking.exists():
        where = "is a link to" if blocking == path else f"is under {blocking}, a link to"
        return (f"--output {output} {where} {os.readlink(blocking)}, which does not exist: remove the link, or choose "
                "another --output")
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


def interrupted(prog: str, kept: str) -> int:
    """Prints `prog: interrupted: kept` (what was, or was not, written), not a traceback; returns the exit code of
    Ctrl-C."""
    print(f"{prog}: interrupted: {kept}", file=sys.stderr)
    return EXIT_INTERRUPTED


def put_in_place(move):
    """Runs `move()`, the renames that put a command's finished files in place, with Ctrl-C held off (one that comes
    meanwhile is dropped: the files are then in place all the same), and returns what it returns; from then on Ctrl-C
    is ignored (`output_complete`). A Ctrl-C before it leaves the earlier files whole; one after it cannot make a
    complete output look failed. If `move` raises, the earlier handling of Ctrl-C is put back."""
    if threading.current_thread() is not threading.main_thread():  # no signal handler can be set there
        return move()
    previous = signal.signal(signal.SIGINT, lambda signum, frame: None)
    try:
        done = move()
    except BaseException:
        signal.signal(signal.SIGINT, previous)
        raise
    output_complete()
    return done


def output_complete() -> None:
    """The command's output is complete: a Ctrl-C from now on (while the success line is printed, or in the half
    second of the interpreter's exit) no longer changes the outcome. It exited 130 without a word, so that
    `fluxflow-export ... && upload` skipped a good export. Nothing puts the handler back: the process is ending (an
    in-process caller gets its own back from `quiet_when_output_closed`)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def quiet_when_output_closed(main):
    """A CLI's `main`, ending quietly with exit 141 (the shell's code for SIGPIPE) when the reader of its output has
    gone (`fluxflow-train ... --validate-pipeline | head -1`): before, Python printed the BrokenPipeError's traceback,
    or "Exception ignored ... BrokenPipeError" when the output was flushed at exit. SIGPIPE itself stays ignored, as
    Python sets it: a connection to Prefect or MLflow that breaks must raise, not kill the run. A BrokenPipeError
    while stdout and stderr still have their reader (a socket's) is raised as it is. An in-process caller (one that
    passes `argv`) gets its handler of SIGINT back, which `output_complete` set to ignore it; the command keeps
    ignoring it to its exit."""
    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        in_process = argv is not None and threading.current_thread() is threading.main_thread()
        sigint = signal.getsignal(signal.SIGINT) if in_process else None
        try:
            try:
                return main(argv)
            finally:
                if sigint is not None:
                    signal.signal(signal.SIGINT, sigint)
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
