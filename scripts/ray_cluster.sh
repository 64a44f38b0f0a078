#!/usr/bin/env bash
# `make ray-cluster`: a Ray cluster of two nodes on this machine, for trying the Ray executor without a real cluster.
#
#   bash scripts/ray_cluster.sh          # head (node_a) + worker node (node_b), in the background
#   bash scripts/ray_cluster.sh stop     # stops both (only these two: never `ray stop`, which stops every Ray here)
#
# Each node is a `ray start --block` started detached by start_service (scripts/_service.sh), with its own resources:
# FLUXFLOW_RAY_CPUS CPUs each (default 1, so that two steps at once must take one node each), FLUXFLOW_RAY_GPUS GPUs
# each (default 0), and the custom resource `node_a` or `node_b` (a step can ask for one: resources: {custom:
# {node_b: 1}}). Ray's workers put themselves in process groups of their own but stay in their node's session, so
# `stop` signals every process of the two sessions. The Ray dashboard: http://127.0.0.1:$FLUXFLOW_RAY_DASHBOARD_PORT.
# Ray's other servers listen on all interfaces, without authentication (docs/DISTRIBUTED.md, "Try it on one machine").
#
# Environment (all optional, besides those of _service.sh):
#   FLUXFLOW_RAY_PORT            the head's port (GCS), what training.executor.address names  (default: 6379; not
#                                within 10002-19999, Ray's worker ports)
#   FLUXFLOW_RAY_DASHBOARD_PORT  the dashboard, on 127.0.0.1                                   (default: 8265)
#   FLUXFLOW_RAY_CPUS / _GPUS    per node                                                      (default: 1 / 0)
#   FLUXFLOW_RAY_OBJECT_STORE    bytes of object store per node (steps pass only references)   (default: 200 MB)
set -euo pipefail
source "$(dirname "$0")/_service.sh"
take_arguments stop "$@"
cd "$REPO_ROOT"

RAY_PORT="${FLUXFLOW_RAY_PORT:-6379}"
DASHBOARD_PORT="${FLUXFLOW_RAY_DASHBOARD_PORT:-8265}"
if [[ "${1:-}" != stop ]]; then
    refuse_non_port FLUXFLOW_RAY_PORT "$RAY_PORT"  # `abc` was read as a variable below: "abc: unbound variable"
    refuse_non_port FLUXFLOW_RAY_DASHBOARD_PORT "$DASHBOARD_PORT"
    if (( RAY_PORT >= 10002 && RAY_PORT <= 19999 )); then  # Ray refused it with a traceback
        echo "❌ FLUXFLOW_RAY_PORT=$RAY_PORT lies within 10002-19999, the ports Ray gives its workers: choose" \
             "another" >&2
        exit 2
    fi
fi
CPUS="${FLUXFLOW_RAY_CPUS:-1}"
GPUS="${FLUXFLOW_RAY_GPUS:-0}"
OBJECT_STORE="${FLUXFLOW_RAY_OBJECT_STORE:-200000000}"
RAY="$VENV_BIN/ray"

# stop_sessions NAME...: TERM to every process in the session of each named service, KILL after 5 s (gcs_server and
# the raylet do not always stop on TERM).
stop_sessions() {
    local sessions=() pid name
    for name in "$@"; do
        [[ -f "$RUN_DIR/$name.pid" ]] && sessions+=("$(cat "$RUN_DIR/$name.pid")")
        rm -f "$RUN_DIR/$name.pid" "$RUN_DIR/$name.address"
    done
    ((${#sessions[@]})) || { echo "no Ray node of this checkout is running"; return 0; }
    members() { ps -eo pid=,sid= | awk -v list=" ${sessions[*]} " 'index(list, " " $2 " ") {print $1}'; }
    for signal in TERM KILL; do
        for pid in $(members); do kill "-$signal" "$pid" 2>/dev/null || true; done
        for ((i = 0; i < 20 && $(members | wc -l) > 0; i++)); do sleep 0.25; done
    done
    echo "stopped the Ray nodes (sessions ${sessions[*]})"
}

if [[ "${1:-}" == "stop" ]]; then
    stop_sessions ray-worker ray-head
    exit 0
fi

# The step tasks run in the nodes' workers: this checkout importable there, and quiet.
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}" RAY_USAGE_STATS_ENABLED=0
COMMON=(--num-cpus="$CPUS" --num-gpus="$GPUS" --object-store-memory="$OBJECT_STORE" --disable-usage-stats --block)
# A temp dir per node: two nodes sharing one (Ray's default /tmp/ray) each forward every worker's output to the
# driver, so every line of a step appeared twice. Under /tmp whatever TMPDIR says: Ray's unix sockets live there, in
# paths of at most 107 bytes (a TMPDIR of 17 characters ended the head after a minute, the cause only in its logs).
TEMP="/tmp/fluxflow-ray-$(id -u)-$RAY_PORT"

# wait_started NAME: until `ray start` says the node runs (it then blocks).
wait_started() {
    wait_until "$1" 120 "saying the node runs" grep -qs "Ray runtime started" "$RUN_DIR/$1.log"
}

# Running already: its own address (run again with another port, it said "already running" and then printed the new
# port, where nothing listens), or a refusal when another was asked for. Else both ports free, at once (a busy one
# took 40 s and ended in Ray's "Failed to start GCS" traceback).
ADDRESS="127.0.0.1:$RAY_PORT, dashboard 127.0.0.1:$DASHBOARD_PORT"
if running_as ray-head address "$ADDRESS" "FLUXFLOW_RAY_PORT, FLUXFLOW_RAY_DASHBOARD_PORT"; then
    if service_running ray-worker >/dev/null; then
        say_running ray-head address
        echo "run on it:     RAY_ADDRESS=127.0.0.1:$RAY_PORT fluxflow-train --config X.yaml --set" \
             "training.executor.kind=ray"
        exit 0
    fi  # the worker node is gone: started again below, on this head
else
    refuse_busy "the Ray head" 0.0.0.0 "$RAY_PORT" FLUXFLOW_RAY_PORT
    refuse_busy "the Ray dashboard" 127.0.0.1 "$DASHBOARD_PORT" FLUXFLOW_RAY_DASHBOARD_PORT
fi
start_service ray-head "$RAY" start --head --port="$RAY_PORT" --resources='{"node_a": 1}' \
    --include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
    --temp-dir="$TEMP/head" "${COMMON[@]}"
record_start ray-head address "$ADDRESS"
wait_started ray-head
# A second node on the same machine needs a dashboard agent port of its own (the head's agent has the default).
start_service ray-worker "$RAY" start --address="127.0.0.1:$RAY_PORT" --resources='{"node_b": 1}' \
    --dashboard-agent-listen-port=$((DASHBOARD_PORT + 1)) --temp-dir="$TEMP/worker" "${COMMON[@]}"
if ! wait_started ray-worker; then  # e.g. a second node on one machine where Ray refuses it: no head left behind
    stop_sessions ray-worker ray-head  # the worker node too, when it only did not say it runs in time
    exit 1
fi

echo "Ray cluster: 2 nodes (node_a, node_b; $CPUS CPU, $GPUS GPU each) at 127.0.0.1:$RAY_PORT"
echo "Ray dashboard: http://127.0.0.1:$DASHBOARD_PORT"
echo "run on it:     RAY_ADDRESS=127.0.0.1:$RAY_PORT fluxflow-train --config X.yaml --set training.executor.kind=ray"
echo "stop it with:  bash scripts/ray_cluster.sh stop"
