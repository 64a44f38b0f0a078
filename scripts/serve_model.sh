#!/usr/bin/env bash
# `make serve-model`: a registered model over REST on http://127.0.0.1:5001, by default the champion of the
# quickstart's model, with `mlflow models serve` in this checkout's environment (--env-manager local: nothing is
# installed or downloaded), started in the background. Ask it for an image:
#   curl -s -X POST http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
#     -d '{"dataframe_split": {"columns": ["prompt"], "data": [["a red circle"]]}, "params": {"seed": 0}}'
# Environment (all optional, besides those of _service.sh):
#   FLUXFLOW_MODEL_URI    the model to serve          (default: models:/fluxflow-quickstart@champion)
#   FLUXFLOW_SERVE_PORT   its port on 127.0.0.1        (default: 5001)
#   MLFLOW_TRACKING_URI   the store that holds it      (default: $FLUXFLOW_MLFLOW_STORE, else sqlite:///mlflow.db here)
#   FLUXFLOW_MLFLOW_AUTH_FILE   the credentials of that store when it is a server that asks for them
set -euo pipefail
source "$(dirname "$0")/_service.sh"
take_arguments stop "$@"
stop_if_asked model-server "${1:-}"  # `bash scripts/serve_model.sh stop`: stopped, and gone when it returns
cd "$REPO_ROOT"
use_credentials  # the model is read through the tracking server: its credentials, from the secret file

export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-${FLUXFLOW_MLFLOW_STORE:-sqlite:///mlflow.db}}"
# `mlflow models serve` starts `uvicorn` by name: this environment's must be the one found.
export PATH="$VENV_BIN:$PATH"
MODEL_URI="${FLUXFLOW_MODEL_URI:-models:/fluxflow-quickstart@champion}"
SERVE_PORT="${FLUXFLOW_SERVE_PORT:-5001}"
# The model the running server serves, and from which store: it said "Model X" of any X asked for.
SERVED="$RUN_DIR/model-server.model"
ASKED="$MODEL_URI (store: $MLFLOW_TRACKING_URI)"
if service_running model-server >/dev/null; then
    if [[ "$(cat "$SERVED" 2>/dev/null)" != "$ASKED" ]]; then
        echo "❌ the model server (pid $(cat "$RUN_DIR/model-server.pid")) serves $(cat "$SERVED" 2>/dev/null ||
              echo "another model"), not $ASKED: stop it first (bash scripts/serve_model.sh stop)" >&2
        exit 2
    fi
else  # the model first: a name or alias the store does not have is one line here, not a traceback in the log
    "$VENV_BIN/python" -m flows.registry "$MODEL_URI" "MLFLOW_TRACKING_URI or FLUXFLOW_MLFLOW_STORE" || exit 2
fi

start_server model-server 127.0.0.1 "$SERVE_PORT" FLUXFLOW_SERVE_PORT "$VENV_BIN/mlflow" models serve -m "$MODEL_URI" --env-manager local \
    --host 127.0.0.1 --port "$SERVE_PORT"
printf '%s\n' "$ASKED" >"$SERVED"
wait_http model-server "http://127.0.0.1:$SERVE_PORT/ping" 180
echo "Model $MODEL_URI (store: $MLFLOW_TRACKING_URI): POST http://127.0.0.1:$SERVE_PORT/invocations"
stop_hint model-server
