#!/usr/bin/env bash
# `make mlflow-ui`: the MLflow UI on http://127.0.0.1:5000 over the default store of this checkout (sqlite:///mlflow.db
# in the repository root, artifacts under ./mlruns), loopback only, started in the background.
#
# For other hosts: FLUXFLOW_MLFLOW_HOST=0.0.0.0 (or an address of this machine) with FLUXFLOW_MLFLOW_AUTH_FILE, a file
# whose first line is USER:PASSWORD. The server then runs MLflow's basic-auth app with USER as its admin, the password
# set from the file at every start (scripts/mlflow_auth.py), and answers 401 to requests without it; /health stays
# open. Without the file the script refuses any host but loopback.
set -euo pipefail
source "$(dirname "$0")/_service.sh"
take_arguments stop "$@"
stop_if_asked mlflow-ui "${1:-}"  # `bash scripts/mlflow_ui.sh stop`: stopped, and gone when it returns
cd "$REPO_ROOT"

# The tracking server would otherwise spawn ~2 GB of job-runner processes that this product never uses.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
STORE="${FLUXFLOW_MLFLOW_STORE:-sqlite:///mlflow.db}"
HOST="${FLUXFLOW_MLFLOW_HOST:-127.0.0.1}"
UI=("$VENV_BIN/mlflow" ui --host "$HOST" --port "$MLFLOW_PORT" --backend-store-uri "$STORE")

if [[ -n "${FLUXFLOW_MLFLOW_AUTH_FILE:-}" ]]; then
    # A bad file (MLflow's rules too: a password of 12 characters at least): said here, not after "started" in a log.
    "$VENV_BIN/python" "$REPO_ROOT/scripts/mlflow_auth.py" --check || exit 2
    start_server mlflow-ui "$HOST" "$MLFLOW_PORT" FLUXFLOW_MLFLOW_PORT "$VENV_BIN/python" \
        "$REPO_ROOT/scripts/mlflow_auth.py" "${UI[@]}"
    auth="basic authentication on: clients need FLUXFLOW_MLFLOW_AUTH_FILE (or MLFLOW_TRACKING_USERNAME/PASSWORD)"
elif ! is_loopback "$HOST"; then
    refuse_open "the MLflow server" "$HOST" FLUXFLOW_MLFLOW_AUTH_FILE
else
    start_server mlflow-ui "$HOST" "$MLFLOW_PORT" FLUXFLOW_MLFLOW_PORT "${UI[@]}"
    auth="no authentication (loopback only)"
fi
PROBE="$(probe_host "$HOST")"
wait_http mlflow-ui "http://$PROBE:$MLFLOW_PORT/health" 120
echo "MLflow UI: http://$PROBE:$MLFLOW_PORT   (store: $STORE; $auth)"
stop_hint mlflow-ui
