#!/usr/bin/env bash
# `make server`: the Prefect server with its UI on http://127.0.0.1:4200, loopback only, started in the background.
# Its database is $PREFECT_HOME/prefect.db (default ~/.prefect), the same one the embedded API of `fluxflow-train`
# writes to, so runs made without a server show up here too.
set -euo pipefail
source "$(dirname "$0")/_service.sh"

start_service prefect-server "$PREFECT" server start --host 127.0.0.1 --port "$PREFECT_PORT" --analytics-off
# A cold start with a fresh database takes 12-15 s on 2 cores (PITFALLS.md); allow plenty.
wait_http prefect-server "http://127.0.0.1:$PREFECT_PORT/api/health" 180
echo "Prefect UI:  http://127.0.0.1:$PREFECT_PORT"
echo "Prefect API: http://127.0.0.1:$PREFECT_PORT/api   (export PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api)"
stop_hint prefect-server
