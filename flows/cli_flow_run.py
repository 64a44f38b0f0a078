"""What `fluxflow-train` does around the flow: starts it on the Prefect API the run uses, then prints how each step
ended and where to look (samples, checkpoints, the MLflow and Prefect UIs, the registered model). The flow
(flows/pipeline_flow.py) orchestrates and prints nothing of this.
"""
from __future__ import annotations

from flows import env  # noqa: F401  (must precede prefect and mlflow)

import contextlib
import shlex
import shutil
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient
from prefect.settings import PREFECT_API_URL, PREFECT_FLOWS_HEARTBEAT_FREQUENCY, PREFECT_UI_URL, temporary_settings
from prefect.utilities.urls import url_for

from flows import artifacts
from flows.credentials import mlflow_refusal
from flows.exit_codes import EXIT_OK, EXIT_STEP_FAILED
from flows.fault_policy import failure_exit_code, state_exception
from flows.mlflow_runs import find_runs, output_dir_of, pipeline_run_tags, resolve_tracking_uri
from flows.pipeline_flow import pipeline_flow
from flows.prefect_server import ServerNotReady, api_url_for_run, kept_server_of
from flows.promotion import release_lines
from flows.tracking_queue import TRACKING
from fluxflow.checkpoints.lock import RunLockedError
from fluxflow.checkpoints.ref import StepOutcome
from fluxflow.config import PipelineConfig
from fluxflow.config.run_config import run_dict
from fluxflow.train.pipeline_schedule import PipelineFailed
from fluxflow.wording import counted


def _command(name: str) -> str:
    """How to call a console script of this installation from the current directory: its bare name when PATH finds
    this one (an activated venv), else its path (`.venv/bin/mlflow` after `make demo`, which does not activate), quoted
    for the shell."""
    script = Path(sys.executable).parent / name
    if not script.exists() or shutil.which(name) == str(script):
        return name
    try:
        return shlex.quote(str(script.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(script))


def print_where_to_look(config: PipelineConfig, flow_run_id, api_url: str | None = None) -> None:
    """Where the samples are, and the commands that show this run in the MLflow UI and the Prefect UI. `api_url`: the
    temporary Prefect server the flow ran on, if it did (run_pipeline_flow)."""
    out = output_dir_of(config)
    uri = resolve_tracking_uri(config.tracking.tracking_uri)
    client = MlflowClient(uri)
    # Records still queued: the server does not answer, and a lookup would wait minutes in MLflow's retries. Refused
    # credentials: the run failed saying so, and the lookup would only raise the same 401.
    skip = TRACKING.pending() or mlflow_refusal(uri)
    experiment = None if skip else client.get_experiment_by_name(config.tracking.experiment_name)
    runs = find_runs(client, experiment.experiment_id, pipeline_run_tags(out)) if experiment else []
    if not config.output.no_samples:  # the folder is never made then
        print(f"Samples:     {out}/samples")
    print(f"Checkpoints: {out}/checkpoints")
    if runs:
        run_url = artifacts.mlflow_run_url(uri, experiment.experiment_id, runs[0].info.run_id)
        start = "" if uri.startswith(("http://", "https://")) else (
            f"{_command('mlflow')} ui --host 127.0.0.1 --backend-store-uri {shlex.quote(uri)}   then open ")
        print(f"MLflow UI:   {start}{run_url}")
    for line in release_lines(client, config, out) if experiment else []:  # versions and champion (flows/promotion.py)
        print(line)
    flow_run_url = url_for("flow-run", obj_id=flow_run_id, default_base_url="http://127.0.0.1:4200")
    start = "" if PREFECT_UI_URL.value() else f"{_command('prefect')} server start --host 127.0.0.1   then open "
    kept = kept_server_of(api_url)
    if kept:  # still running, on its own port: the run's records are there (it has no UI; a UI server reads them too)
        print(f"Prefect:     {kept.api_url}/flow_runs/{flow_run_id} on the kept server (pid {kept.pid}; an API "
              f"without UI; for the UI: {start}{flow_run_url})")
        return
    print(f"Prefect UI:  {start}{flow_run_url}")


def print_steps(finished: list[dict], not_finished: dict[str, str] | None = None) -> None:
    """One line per step: each finished one's outcome, epochs and checkpoint (`StepOutcome.to_dict()`s), then how
    each other one ended (`failed: ERROR`, `not run: a failed`)."""
    for outcome in map(StepOutcome.from_dict, finished):
        result = outcome.result
        trained = "" if result.trained else " (already complete, skipped)"
        where = f", on {outcome.placement()}" if outcome.placement() else ""
        print(f"  {result.step_name}: {result.outcome}{trained}, {counted(result.epochs_done, 'epoch')}, "
              f"{outcome.ref.uri}{where}")
    for name, how in (not_finished or {}).items():
        print(f"  {name}: {how}")


def run_pipeline_flow(config: PipelineConfig, overrides: list[str] | None = None) -> int:
    """Run the flow on the current Prefect API (the embedded one by default) with the config `fluxflow-train`
    resolved (`overrides`: the `--set` changes it applied, recorded on the MLflow run). Exit code: 0 done, 1 failed,
    2 a failure the user must fix first (flows/fault_policy.py)."""
    try:
        api_url = api_url_for_run()  # the temporary server's, unless Prefect's settings name a server
    except ServerNotReady as exc:
        print(f"Cannot start the flow: {exc}", file=sys.stderr)
        return EXIT_STEP_FAILED
    # Heartbeats let a lasting server mark crashed runs; the temporary one ends with this process, and the heartbeat
    # thread's join costs up to 1 s per run. The UI's address would otherwise follow the API's, and Prefect would print
    # "View at" a server that has no UI and stops with the run: a UI the user's settings name is kept, else no link
    # (as on Prefect's own ephemeral server; the summary at the end says how to open the run in a UI).
    temporary = {PREFECT_API_URL: api_url, PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
                 PREFECT_UI_URL: PREFECT_UI_URL.value() or ""}
    with temporary_settings(temporary) if api_url else contextlib.nullcontext():
        state = pipeline_flow(run_dict(config), overrides=overrides or None, return_state=True)
        failure = None if state.is_completed() else state_exception(state)
        if state.is_completed():
            print("Pipeline finished:")
            print_steps(state.result())
        elif isinstance(failure, RunLockedError):
            # Another run took the directory in the seconds between this one's early check and its flow's start:
            # nothing of this run exists to look at, and the lines of "where to look" would show the other's.
            return failure_exit_code(state)
        else:
            print(f"Pipeline {state.name.lower()}: {state.message}")
            if isinstance(failure, PipelineFailed):  # the steps that finished, failed and did not run, as above
                print_steps(failure.finished, failure.not_finished)
    print_where_to_look(config, state.state_details.flow_run_id, api_url)
    return EXIT_OK if state.is_completed() else failure_exit_code(state)  # 2 when the user must fix something first
