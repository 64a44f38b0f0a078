"""`fluxflow-train`: validate a pipeline config, or run it as the Prefect flow `fluxflow-pipeline` (exit codes: the
parser's epilog). Validation imports neither torch, Prefect nor MLflow: the parameter counts are computed from the
model section (config/model_sizes.py).
"""
from __future__ import annotations

from flows import env  # noqa: F401  (quiet, offline defaults before Prefect or MLflow is imported)

import argparse
import atexit
import logging
import os
import shlex
import signal
import sys
import threading

from fluxflow.config import ConfigError
from fluxflow.config.model_sizes import parameter_counts
from fluxflow.config.run_config import resolve_run_config
from fluxflow.config.summary import format_parameters, format_summary
from flows.cli_common import add_version_argument, parse, quiet_when_output_closed
from flows.exit_codes import EXIT_FIX_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_TERMINATED
from flows.prefect_server import start_temporary_server, started_server


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fluxflow-train",
        description="Train a text-to-image model in the stages declared by a YAML config: each step runs as a task "
                    "of the Prefect flow 'fluxflow-pipeline' and is recorded as a nested MLflow run.",
        epilog="Exit codes: 0 done (or the config is valid), 1 a step failed, 2 invalid config, missing file, "
               "broken YAML, bad arguments, a device this machine lacks, an output directory in use, an MLflow store "
               "that cannot be written or a deleted experiment, or a step failure a rerun cannot fix (a full disk, "
               "unusable data), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 141 its output's reader stopped "
               "(| head). Config reference: docs/CONFIG.md.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", type=os.path.expanduser,
                        help="pipeline config (YAML); see configs/ for examples")
    parser.add_argument("--validate-pipeline", action="store_true",
                        help="check the config and print the pipeline summary (steps, modes, freezes, transitions, "
                             "datasets, parameter counts) without training; exit 0 if valid, 2 if not")
    parser.add_argument("--output-dir", metavar="DIR",
                        help="where checkpoints, samples and metrics go (overrides output.output_path)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"),
                        help="device to train on (overrides training.device; auto = CUDA when present)")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                        help="change one value of the config without editing it (repeatable), e.g. "
                             "--set training.seed=1 --set training.pipeline.steps.flow.n_epochs=20 (a step by its "
                             "name; VALUE is YAML: lists [0, 1], mappings {type: AdamW}); validated like the file")
    parser.add_argument("--quiet", action="store_true",
                        help="leave out the plan printed before training and the warnings about keys of the "
                             "original tool (training's progress lines and the closing summary still print)")
    parser.add_argument("--keep-server", action="store_true",
                        help="leave the temporary Prefect server running after the run, for later runs to reuse "
                             "(saves its start; it prints its pid; without PREFECT_API_URL set)")
    add_version_argument(parser)
    return parser


@quiet_when_output_closed
def main(argv: list[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    server = None
    ctrl_c = remember_ctrl_c()
    try:
        loaded = configured(args)
        config = loaded.config
        if args.validate_pipeline:
            return EXIT_OK
        check_cluster(config)  # before the server starts: a refusal is then the only line printed
        # The temporary Prefect server (unless one is configured) starts now, so that its start overlaps the imports
        # of torch, Prefect and MLflow that follow (flows/prefect_server.py).
        server = start_temporary_server(keep=args.keep_server)
        check_can_run(config, device_setting="--device" if args.device else "training.device")
        # Prefect, MLflow and torch, a second or more: imported here, a Ctrl-C meanwhile is the one line below (in
        # train() it escaped as a 40-line traceback, the process killed by SIGINT).
        from flows.cli_flow_run import run_pipeline_flow
        if ctrl_c():  # its KeyboardInterrupt was raised where Python ignores exceptions (below)
            raise KeyboardInterrupt
    except (Refused, KeyboardInterrupt) as exc:
        # The refusal (or the interruption) first, then the server started early for speed is stopped without a word
        # about it: it was never used. A kept one (--keep-server) still says where it runs.
        interrupted = isinstance(exc, KeyboardInterrupt)  # Ctrl-C during the checks and imports: nothing started yet
        print("Interrupted before training started: nothing was trained or changed." if interrupted else f"❌ {exc}",
              file=sys.stderr)
        server = server or started_server()  # a Ctrl-C inside its start: it runs, but was not returned
        if server:
            server.stop(quiet=True)
        return EXIT_INTERRUPTED if interrupted else EXIT_FIX_INPUT
    finally:
        ctrl_c(restore=True)
    return train(run_pipeline_flow, config, args.overrides, dated=loaded.dated)


def remember_ctrl_c():
    """Until training starts, Ctrl-C is remembered as well as raised: Python raises it wherever the main thread is,
    and in a callback whose exceptions it ignores (logging's at-fork hook while the temporary server's process is
    forked: "Exception ignored in: <function _releaseLock>") the KeyboardInterrupt was lost and the run went on to
    train. Such a callback's KeyboardInterrupt, remembered here, is not printed either (an importlib module lock's
    callback printed "Exception ignored ... Traceback ... KeyboardInterrupt" before the one line). Returns
    `came(restore=False)`: whether one came; `restore=True` puts the previous handler and hook back. A SIGINT that is
    ignored (a job started with `&`) or handled by the caller is left as it is."""
    came = []

    def on_sigint(signum, frame):
        came.append(signum)
        signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt

    def unraisable(info):
        if not (came and issubclass(info.exc_type, KeyboardInterrupt)):
            previous_hook(info)

    previous, previous_hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
    mine = previous is signal.default_int_handler and threading.current_thread() is threading.main_thread()
    if mine:
        signal.signal(signal.SIGINT, on_sigint)
        sys.unraisablehook = unraisable

    def check(restore: bool = False) -> bool:
        if restore and mine:
            signal.signal(signal.SIGINT, previous)
            sys.unraisablehook = previous_hook
        return bool(came)
    return check


class Refused(Exception):
    """A config, an argument or the machine makes training impossible: the one line to print (exit 2)."""


def configured(args: argparse.Namespace):
    """The run's config as a LoadedConfig, resolved once (fluxflow/config/run_config.py: the command line's
    overrides, output directory with `{date}` filled, device; data folders checked): the flow and its tasks train
    exactly this. Prints the warnings (with --quiet those about the original tool's keys left out) and, unless
    --quiet, the plan."""
    try:
        loaded = resolve_run_config(args.config, output_dir=args.output_dir, device=args.device,
                                    overrides=args.overrides, check_data=not args.validate_pipeline,
                                    output_dir_name="--output-dir", device_name="--device", overrides_name="--set")
    except ConfigError as exc:
        raise Refused(str(exc)) from None  # "N problems in FILE:" and one line per problem
    config = loaded.config
    # The warnings, then the plan: for a run as for --validate-pipeline. A value of the run's own that has no effect
    # is said with --quiet too (--set of an lr no optimizer takes: nothing else says the run ignores it).
    for warning in loaded.warnings:
        if not (args.quiet and warning in loaded.legacy_warnings):
            print(f"⚠️  {warning}", file=sys.stderr)
    if not args.quiet:
        print(format_summary(config))
        print()
        print(format_parameters(parameter_counts(config.model, config.data.channels)), flush=True)
    return loaded


def check_can_run(config, device_setting: str = "training.device") -> None:
    """A device this machine lacks, or an output directory another run holds, is the caller's setting, not a
    training failure: say so before the flow starts (inside it, the step would fail and be retried for nothing);
    `device_setting` names where the device was set (`--device`: the file's training.device is not what is wrong). The
    flow takes the lock itself for the whole run; this is only the early answer. With the Ray executor the device is
    the cluster's (check_cluster). Likewise a secret file that cannot be read, a configured Prefect server that does
    not answer, or a server that answers 401 to this process's credentials, would fail the run later (Prefect) or drop
    every MLflow record as rejected (flows/credentials.py); so would a local store MLflow cannot open (a file that is
    not a database) or make or write (a read-only working directory), and an experiment deleted in the MLflow UI. An
    MLflow server that does not answer at all is not refused here: the run starts and its records wait
    (docs/OPERATIONS.md)."""
    from flows.credentials import mlflow_refusal, prefect_refusal, prefect_unreachable
    from flows.mlflow_runs import resolve_tracking_uri, unusable_store  # the run's own store
    from fluxflow.checkpoints.lock import OutputDirUnusable, RunLockedError
    from fluxflow.runtime.device import DeviceUnavailable, resolve_device
    from fluxflow.storage.location import StorageError
    from fluxflow.storage.store_lock import output_lock

    try:
        if config.training.executor.kind == "local":
            resolve_device(config.training.device, device_setting)
        # On an object store this also asks for its bucket and credentials, and takes over (saying so) the lock
        # that a killed run left.
        with output_lock(config.output.output_path, say=lambda line: print(line, file=sys.stderr)):
            pass
    except (DeviceUnavailable, OutputDirUnusable, RunLockedError, StorageError) as exc:
        raise Refused(str(exc)) from None
    if env.CREDENTIALS_PROBLEM:
        raise Refused(env.CREDENTIALS_PROBLEM)
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    problem = (prefect_unreachable() or prefect_refusal() or mlflow_refusal(uri)
               or unusable_store(uri, config.tracking.experiment_name))
    if problem:
        raise Refused(problem)


def check_cluster(config) -> None:
    """With the Ray executor: the cluster answers, has a node for every step's resources, and every node reaches an
    object-store output (flows/ray_steps.py). This process stays connected; the flow's steps are submitted through
    that connection."""
    if config.training.executor.kind != "ray":
        return
    from flows.ray_steps import ClusterUnreachable, Infeasible, StoreUnreachable, preflight

    try:
        preflight(config)
    except (ClusterUnreachable, Infeasible, StoreUnreachable) as exc:
        raise Refused(str(exc)) from None


def train(run_pipeline_flow, config, overrides: list[str], dated: bool = False) -> int:
    """Run the flow (flows/cli_flow_run.py run_pipeline_flow); Ctrl-C and SIGTERM end it with 130 / 143 once the
    running steps have saved their batch. `dated`: the output directory came from `{date}`, so the same command on
    another day would not resume it."""
    # SIGTERM ends the process through Python's exit path, as Ctrl-C does: Prefect hands the signal back to this
    # handler once the flow has stopped its steps, and the exit stops Prefect's temporary API server
    # (flows/prefect_server.py), which the default action (die at once) would leave for its parent-death signal.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(run_pipeline_flow(config, overrides))
    except KeyboardInterrupt:
        print(f"Interrupted: {how_to_resume(config, dated)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"Terminated: {how_to_resume(config, dated)}", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        signal.signal(signal.SIGTERM, previous)


GO_ON = ("to go on where it stopped (finished steps are reused, an interrupted one resumes from its latest "
         "checkpoint)")


def how_to_resume(config, dated: bool) -> str:
    """The end of the line an interrupted run prints: true wherever the stop came (before a step's first checkpoint,
    during a latent cache build, during registration after every step finished; it promised a checkpoint to resume
    from in each case). With `{date}` the same command on another day (UTC) would train into another directory from
    scratch: name this one."""
    if not dated:
        return f"run the same command again {GO_ON}."
    out = shlex.quote(str(config.output.output_path))
    return (f"run the same command again with --output-dir {out} {GO_ON}; {{date}} names another directory on "
            "another day, UTC.")


class Terminated(BaseException):
    """SIGTERM, raised in the main thread (a BaseException, like KeyboardInterrupt: nothing may swallow it)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


def entry() -> None:
    """The `fluxflow-train` command: `main`, then an exit without the interpreter's teardown of torch, Prefect and
    MLflow (module clean-up and garbage collection: about 2 s of every run, measured in docs/PERFORMANCE.md, that
    saves nothing). It is registered first so it runs last: Prefect's services have drained (threading's exit hooks
    run before atexit), the temporary Prefect server has stopped and every other exit handler has run. In-process
    callers of `main` (tests, scripts) keep the normal exit."""
    atexit.register(_exit_now)
    code = main()
    _EXIT_CODE.append(code)
    sys.exit(code)


_EXIT_CODE: list[int] = []  # set once `main` has returned; an exception leaves the normal exit path


def _exit_now() -> None:
    if not _EXIT_CODE:
        return
    logging.shutdown()  # flush and close log handlers, as the normal exit would
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_CODE[0])


if __name__ == "__main__":
    entry()
