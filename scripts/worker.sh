#!/usr/bin/env bash
# `make worker`: a Prefect process worker on the `gpu` work pool, in the background. Creates the pool and the `gpu`
# task-tag concurrency limit (1 step at a time) first when they are missing. Needs a server (`make server`, or
# PREFECT_API_URL). Where several GPU hosts share one server, give each host its own limit:
#   FLUXFLOW_GPU_TAG=gpu-$(hostname) make worker     # creates the limit gpu-<host> = 1; this host's steps take its slot
#
#   bash scripts/worker.sh               # background, pid in .run/prefect-worker.pid (what `make worker` does)
#   bash scripts/worker.sh --foreground  # in this terminal, Ctrl-C stops it (the Docker image's command)
#
# The worker starts each flow run as a child process in its process group, with the worker's environment, in the
# checkout named by FLUXFLOW_HOME (read by the deployments' pull step). Set MLFLOW_TRACKING_URI before starting the
# worker to send the runs' MLflow records elsewhere than ./mlflow.db of the checkout.
# Servers that ask for credentials: set FLUXFLOW_PREFECT_AUTH_FILE / FLUXFLOW_MLFLOW_AUTH_FILE (files whose first
# line is USER:PASSWORD) before starting it; the worker and the flow runs it starts send them, and it refuses to start
# when a server answers 401 to them.
set -euo pipefail
source "$(dirname "$0")/_service.sh"
take_arguments "--foreground stop" "$@"
# `bash scripts/worker.sh stop`: stopped, and gone when it returns. 45 s before KILL: the worker gives the flow runs it
# started (each in a session of its own) 30 s to save their step and stop, then ends them, then itself.
stop_if_asked prefect-worker "${1:-}" 45
cd "$REPO_ROOT"

# Running already: its tag, before anything is created (another FLUXFLOW_GPU_TAG made a limit for a tag that no
# running worker's steps carry, and the script named that tag).
if [[ "${1:-}" != "--foreground" ]] && running_as prefect-worker tag "$FLUXFLOW_GPU_TAG" FLUXFLOW_GPU_TAG; then
    say_running prefect-worker tag
    exit 0
fi
use_local_server
ensure_pool_and_limit
WORKER=("$PREFECT" worker start --pool "$POOL_NAME" --type process --name "gpu-$(hostname)")

if [[ "${1:-}" == "--foreground" ]]; then
    exec "${WORKER[@]}"
fi

start_service prefect-worker "${WORKER[@]}"
record_start prefect-worker tag "$FLUXFLOW_GPU_TAG"
# The worker has no port to poll; it prints "Worker '<name>' started!" once it polls the pool.
pidfile="$RUN_DIR/prefect-worker.pid"
for ((i = 0; ; i++)); do
    grep -q "started!" "$RUN_DIR/prefect-worker.log" 2>/dev/null && break
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "the worker exited; last lines of $RUN_DIR/prefect-worker.log:" >&2
        tail -n 30 "$RUN_DIR/prefect-worker.log" >&2
        rm -f "$pidfile"
        exit 1
    fi
    if ((i >= 480)); then
        echo "the worker did not report 'started!' within 120 s (still running as pid $(cat "$pidfile"); see" \
             "$RUN_DIR/prefect-worker.log)" >&2
        exit 1
    fi
    sleep 0.25
done
echo "worker polling pool '$POOL_NAME' on $PREFECT_API_URL (flow runs start in $FLUXFLOW_HOME; their steps take"
echo "slots of the limit '$FLUXFLOW_GPU_TAG': see it with $PREFECT concurrency-limit inspect $FLUXFLOW_GPU_TAG)"
stop_hint prefect-worker
