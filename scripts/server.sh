#!/usr/bin/env bash
# `make server`: the Prefect server with its UI on http://127.0.0.1:4200, loopback only, started in the background.
# Its database is $PREFECT_HOME/prefect.db (default ~/.prefect), the same one the embedded API of `fluxflow-train`
# writes to, so runs made without a server show up here too.
#
# For other hosts: FLUXFLOW_PREFECT_HOST=0.0.0.0 (or an address of this machine) with FLUXFLOW_PREFECT_AUTH_FILE, a
# file whose first line is USER:PASSWORD. The server then answers 401 to every API request without that Basic
# credential (Prefect's PREFECT_SERVER_API_AUTH_STRING, given through the environment, never on the command line);
# /api/health stays open. Without the file the script refuses any host but loopback.
set -euo pipefail
source "$(dirname "$0")/_service.sh"
take_arguments stop "$@"
stop_if_asked prefect-server "${1:-}"  # `bash scripts/server.sh stop`: stopped, and gone when it returns

HOST="${FLUXFLOW_PREFECT_HOST:-127.0.0.1}"
if [[ -z "${PREFECT_SERVER_API_AUTH_STRING:-}" && -n "${FLUXFLOW_PREFECT_AUTH_FILE:-}" ]]; then
    PREFECT_SERVER_API_AUTH_STRING="$(read_secret FLUXFLOW_PREFECT_AUTH_FILE)" || exit 2
fi
if [[ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]]; then
    export PREFECT_SERVER_API_AUTH_STRING
    auth="authentication on: clients need FLUXFLOW_PREFECT_AUTH_FILE (or PREFECT_API_AUTH_STRING)"
elif ! is_loopback "$HOST"; then
    refuse_open "the Prefect server" "$HOST" FLUXFLOW_PREFECT_AUTH_FILE
else
    auth="no authentication (loopback only)"
fi
PROBE="$(probe_host "$HOST")"

# The UI's own API address comes from these settings, not from --port: without them a server on another port than
# 4200 served a UI that called http://127.0.0.1:4200/api ("Can't connect to Server API").
export PREFECT_SERVER_API_PORT="$PREFECT_PORT"
start_server prefect-server "$HOST" "$PREFECT_PORT" FLUXFLOW_PREFECT_PORT \
    "$PREFECT" server start --host "$HOST" --port "$PREFECT_PORT" --analytics-off
# A cold start with a fresh database took 12-15 s on 2 cores (measured); allow plenty.
wait_http prefect-server "http://$PROBE:$PREFECT_PORT/api/health" 180
echo "Prefect UI:  http://$PROBE:$PREFECT_PORT   ($auth)"
echo "Prefect API: http://$PROBE:$PREFECT_PORT/api   (export PREFECT_API_URL=http://$PROBE:$PREFECT_PORT/api)"
stop_hint prefect-server
