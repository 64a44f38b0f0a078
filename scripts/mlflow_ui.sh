#!/usr/bin/env bash
# `make mlflow-ui`: the MLflow UI on http://127.0.0.1:5000 over the default store of this checkout (sqlite:///mlflow.db
# in the repository root, artifacts under ./mlruns), loopback only, started in the background.
set -euo pipefail
source "$(dirname "$0")/_service.sh"
cd "$REPO_ROOT"

# The tracking server would otherwise spawn ~2 GB of job-runner processes that this product never uses (PITFALLS.md).
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
STORE="${FLUXFLOW_MLFLOW_STORE:-sqlite:///mlflow.db}"

start_service mlflow-ui "$VENV_BIN/mlflow" ui --host 127.0.0.1 --port "$MLFLOW_PORT" --backend-store-uri "$STORE"
wait_http mlflow-ui "http://127.0.0.1:$MLFLOW_PORT/health" 120
echo "MLflow UI: http://127.0.0.1:$MLFLOW_PORT   (store: $STORE)"
stop_hint mlflow-ui
