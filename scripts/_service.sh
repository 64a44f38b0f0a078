# Shared by server.sh, mlflow_ui.sh, worker.sh and deploy.sh (sourced, not run).
#
# Each long-running component is started detached in its own session (setsid), so its pid is also its process-group
# id: `kill -- -PID` stops it together with every child it spawned (uvicorn workers, flow-run processes, torch
# children). A worker started with `&` from a non-interactive script ignores SIGINT (bash sets it so), which is why
# nothing here relies on signals reaching it through a terminal.
#
# Environment (all optional):
#   FLUXFLOW_RUN_DIR       where pid and log files go            (default: <repo>/.run)
#   FLUXFLOW_VENV_BIN      the virtualenv's bin directory         (default: <repo>/.venv/bin)
#   FLUXFLOW_PREFECT_PORT  Prefect server port on 127.0.0.1       (default: 4200)
#   FLUXFLOW_MLFLOW_PORT   MLflow UI port on 127.0.0.1            (default: 5000)
#   FLUXFLOW_GPU_TAG       the tag limit whose slot this GPU host's steps take (default: gpu; one per host when several
#                          hosts share a server, e.g. gpu-$(hostname): docs/DISTRIBUTED.md)
#   FLUXFLOW_GPU_SLOTS     that limit's value, steps at a time   (default: 1)
#   PREFECT_API_URL        the server the worker/deploy talk to   (default: http://127.0.0.1:$FLUXFLOW_PREFECT_PORT/api)
#   FLUXFLOW_PREFECT_HOST / FLUXFLOW_MLFLOW_HOST   the address a server binds (default: 127.0.0.1, loopback only);
#                          any other address needs that server's secret file, else the script refuses to start it
#   FLUXFLOW_PREFECT_AUTH_FILE / FLUXFLOW_MLFLOW_AUTH_FILE   secret files, first line USER:PASSWORD (may be one file):
#                          the servers ask for these credentials and the worker, deploy and its flow runs send them
#                          (docs/OPERATIONS.md, "Servers other hosts can reach")

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${FLUXFLOW_RUN_DIR:-$REPO_ROOT/.run}"
VENV_BIN="${FLUXFLOW_VENV_BIN:-$REPO_ROOT/.venv/bin}"
PREFECT_PORT="${FLUXFLOW_PREFECT_PORT:-4200}"
MLFLOW_PORT="${FLUXFLOW_MLFLOW_PORT:-5000}"
GPU_SLOTS="${FLUXFLOW_GPU_SLOTS:-1}"
# Exported: the worker passes its environment to the flow runs it starts, whose step tasks carry this tag.
export FLUXFLOW_GPU_TAG="${FLUXFLOW_GPU_TAG:-gpu}"
POOL_NAME="gpu"

# Quiet and offline, whatever the caller's shell has. Repeats flows/env.py because the prefect and mlflow commands
# started from here import nothing of this repository.
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true
# The checkout the deployments' pull step changes into (deployments/prefect.yaml reads it at run time).
export FLUXFLOW_HOME="${FLUXFLOW_HOME:-$REPO_ROOT}"

PREFECT="$VENV_BIN/prefect"

_DETACH='import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.setsid(); os.execvp(sys.argv[1], sys.argv[1:])'

# live_pid NAME: the pid recorded in $RUN_DIR/NAME.pid when it names a live process; fails otherwise.
live_pid() {
    local pid
    pid="$(cat "$RUN_DIR/$1.pid" 2>/dev/null)" && [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

# service_running NAME: whether the process recorded in $RUN_DIR/NAME.pid is alive (it says so, and how to stop it).
service_running() {
    local pid
    pid="$(live_pid "$1")" || return 1
    echo "$1 is already running (pid $pid); stop it with: bash scripts/$(basename "$0") stop"
}

# running_as NAME RECORD ASKED SETTING: whether NAME is running (its pid file names a live process) with ASKED, what
# $RUN_DIR/NAME.RECORD says it was started with (its address, its tag; record_start writes it). Running with something
# else, it refuses in one line and exits 2: SETTING names what asked for ASKED. Run again with another port, a script
# said "already running" and then waited minutes on the new port, where nothing had been started.
running_as() {
    local name="$1" record="$2" asked="$3" setting="$4" pid recorded
    pid="$(live_pid "$name")" || return 1
    recorded="$(cat "$RUN_DIR/$name.$record" 2>/dev/null)" || recorded=""
    if [[ -n "$recorded" && "$recorded" != "$asked" ]]; then
        echo "❌ $name is already running (pid $pid) with $record $recorded, not $asked ($setting): stop it first" \
             "(bash scripts/$(basename "$0") stop)" >&2
        exit 2
    fi
    return 0
}

# say_running NAME RECORD: the line for a service running_as found running as asked: its pid, what it runs with.
say_running() {
    local recorded
    recorded="$(cat "$RUN_DIR/$1.$2" 2>/dev/null)" || recorded="not recorded"
    echo "$1 is already running (pid $(cat "$RUN_DIR/$1.pid"), $2 $recorded); stop it with: bash" \
         "scripts/$(basename "$0") stop"
}

# record_start NAME RECORD VALUE: what NAME was started with, beside its pid file, for running_as.
record_start() {
    printf '%s\n' "$3" >"$RUN_DIR/$1.$2"
}

# refuse_non_port PORT_VARIABLE PORT: exit 2 unless PORT (PORT_VARIABLE's value, or its default) is a port, 1-65535,
# written without leading zeros. Its bind failed, which refuse_busy read as "in use by another process".
refuse_non_port() {
    if [[ ! "$2" =~ ^[1-9][0-9]{0,4}$ ]] || (($2 > 65535)); then
        echo "❌ $1=$2 is not a port (1-65535)" >&2
        exit 2
    fi
}

# refuse_busy NAME HOST PORT PORT_VARIABLE: exit 2 when another process holds HOST:PORT: whatever answers there would
# pass for the new server (which exits at once), and the script said "started" and printed the other one's address.
refuse_busy() {
    if ! port_free "$2" "$3"; then
        echo "❌ cannot start $1: port $3 on $2 is in use by another process; stop that one, or choose" \
             "another port with $4=..." >&2
        exit 2
    fi
}

# start_server NAME HOST PORT PORT_VARIABLE COMMAND...: start_service for a server on HOST:PORT (refuse_busy first).
# Already running, it answers at once and exits: 0 with its pid and address when that is HOST:PORT, else 2.
start_server() {
    local name="$1" host="$2" port="$3" variable="$4" recorded setting; shift 4
    refuse_non_port "$variable" "$port"
    # What asked for another address: the port's variable, or the host's (FLUXFLOW_PREFECT_HOST beside _PORT)
    recorded="$(cat "$RUN_DIR/$name.address" 2>/dev/null)" || recorded=""
    setting="$variable"
    [[ -n "$recorded" && "${recorded%:*}" != "$host" ]] && setting="${variable%_PORT}_HOST"
    if running_as "$name" address "$host:$port" "$setting"; then
        say_running "$name" address
        exit 0
    fi
    refuse_busy "$name" "$host" "$port" "$variable"
    start_service "$name" "$@"
    record_start "$name" address "$host:$port"
}

# start_service NAME COMMAND...: run COMMAND detached, log to $RUN_DIR/NAME.log, pid in $RUN_DIR/NAME.pid.
# Returns 0 without starting anything when the recorded pid is still alive.
start_service() {
    local name="$1"; shift
    local pidfile="$RUN_DIR/$name.pid" logfile="$RUN_DIR/$name.log"
    mkdir -p "$RUN_DIR"
    service_running "$name" && return 0
    # A non-interactive shell starts `&` children with SIGINT ignored, and Prefect's worker turns SIGTERM into a
    # SIGINT to itself, so it would never stop: reset SIGINT, start a new session (pid == process-group id) and exec.
    # Without job control the child is not a group leader, so setsid() succeeds and $! is the session leader.
    "$VENV_BIN/python" -c "$_DETACH" "$@" >"$logfile" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$pidfile"
    echo "started $name (pid $pid, log $logfile)"
}

# port_free HOST PORT: whether a server could listen on HOST:PORT now (bound with SO_REUSEADDR, as uvicorn and
# gunicorn bind: a port left in TIME_WAIT is free).
port_free() {
    "$VENV_BIN/python" -c 'import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))' "$1" "$2" 2>/dev/null
}

# stop_hint NAME: how to stop what start_service started (the script run is $0: bash scripts/X.sh).
stop_hint() {
    local pid; pid="$(cat "$RUN_DIR/$1.pid")"
    echo "stop it with: bash scripts/$(basename "$0") stop    # or kill -- -$pid (TERM to its process group, without" \
         "waiting)"
}

# stop_service NAME [SECONDS]: TERM to the process group recorded in $RUN_DIR/NAME.pid, and wait until every process
# of it has exited (KILL after SECONDS, default 15). A start right after `kill -- -PID` (a restart, to rotate a
# password) found the old group still exiting, took it for running, and nothing was left once it had gone. The pid
# file goes, and the records beside it: NAME.model (serve_model.sh's model), NAME.address and NAME.tag (record_start).
stop_service() {
    local name="$1" limit="${2:-15}" pidfile="$RUN_DIR/$1.pid" pid i
    pid="$(cat "$pidfile" 2>/dev/null)" || true
    # No group of that id (an empty file, a group long gone): nothing to stop, and no other group's by a reused id.
    if [[ ! "$pid" =~ ^[0-9]+$ ]] || ! kill -0 -- "-$pid" 2>/dev/null; then
        rm -f "$pidfile" "$RUN_DIR/$name".{model,address,tag}
        echo "$name is not running"
        return 0
    fi
    kill -TERM -- "-$pid" 2>/dev/null || true
    for ((i = 0; i < limit * 4; i++)); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -KILL -- "-$pid" 2>/dev/null; then
        echo "$name did not stop within ${limit} s of TERM: killed" >&2
        for ((i = 0; i < 20; i++)); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$pidfile" "$RUN_DIR/$name".{model,address,tag}
    echo "stopped $name (process group $pid)"
}

# take_arguments KNOWN "$@": a script's arguments, before it does anything: none, or one of the words KNOWN lists
# ("stop", "--foreground stop"), which the script handles; -h or --help prints its usage and header comment, exit 0;
# anything else is refused with the usage, exit 2. Only `stop` was read: --help or a mistyped stop started the service.
take_arguments() {
    local known="$1" usage="usage: bash scripts/$(basename "$0")" word; shift
    [[ -n "$known" ]] && usage+=" [${known// / | }]"
    if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then
        echo "$usage"
        sed -n '2,/^[^#]/s/^# \{0,1\}\(.*\)/\1/p' "$0"  # the header comment, to the first line that is not one
        echo "The variables every script reads (ports, hosts, FLUXFLOW_RUN_DIR, secret files): scripts/_service.sh."
        exit 0
    fi
    for word in $known; do
        [[ "${1:-}" == "$word" ]] && shift && break
    done
    if (($#)); then  # the first unless it is known, else a second: one too many
        echo "❌ unknown argument '$1'; $usage (--help says more)" >&2
        exit 2
    fi
}

# stop_if_asked NAME ARG [SECONDS]: with ARG `stop`, stop_service NAME SECONDS and exit.
stop_if_asked() {
    if [[ "${2:-}" == stop ]]; then
        stop_service "$1" "${3:-}"
        exit 0
    fi
}

# http_ok URL: true when URL answers 2xx within 3 s (Python, not curl: the worker image has no curl).
http_ok() {
    "$VENV_BIN/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1" 2>/dev/null
}

# wait_until NAME SECONDS WHAT CHECK...: wait until the command CHECK... succeeds, failing early (with the log's
# tail) if NAME's process died; WHAT says in the messages what it waits for.
wait_until() {
    local name="$1" limit="$2" what="$3" pid
    shift 3
    pid="$(cat "$RUN_DIR/$name.pid")"
    for ((i = 0; i < limit * 4; i++)); do
        if "$@"; then
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "$name exited before $what; last lines of $RUN_DIR/$name.log:" >&2
            tail -n 30 "$RUN_DIR/$name.log" >&2
            rm -f "$RUN_DIR/$name.pid"
            return 1
        fi
        sleep 0.25
    done
    echo "$name is not yet $what after ${limit}s (still running as pid $pid; see $RUN_DIR/$name.log)" >&2
    return 1
}

# wait_http NAME URL SECONDS: wait until URL answers 200.
wait_http() {
    wait_until "$1" "$3" "answering on $2" http_ok "$2"
}

# use_local_server: point the Prefect CLI at the loopback server (unless PREFECT_API_URL says otherwise), check that
# it answers, and that it and the MLflow server take the credentials of the secret files.
use_local_server() {
    export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:$PREFECT_PORT/api}"
    if ! http_ok "$PREFECT_API_URL/health"; then
        # The UI's address, copied without /api, is a server: "no server answers" sent the user to start another.
        if http_ok "${PREFECT_API_URL%/}/api/health"; then
            echo "no Prefect API at $PREFECT_API_URL (PREFECT_API_URL): it should be the server's API address," \
                 "which ends in /api, e.g. ${PREFECT_API_URL%/}/api" >&2
        else
            echo "no Prefect server answers at $PREFECT_API_URL; start one with: make server" >&2
        fi
        return 1
    fi
    use_credentials
    check_credentials
}

# ensure_pool_and_limit: the `gpu` work pool (type process) and the task-tag concurrency limit $FLUXFLOW_GPU_TAG
# (`gpu` unless set), created only when missing. The limit is on the task tag, not on the pool: a pool concurrency of 1
# would let a flow run hold the only slot while the work it waits on queues behind it (a deadlock); the tag limit
# only serialises the GPU steps.
ensure_pool_and_limit() {
    if ! "$PREFECT" work-pool inspect "$POOL_NAME" >/dev/null 2>&1; then
        "$PREFECT" work-pool create "$POOL_NAME" --type process
    fi
    if ! "$PREFECT" concurrency-limit inspect "$FLUXFLOW_GPU_TAG" >/dev/null 2>&1; then
        "$PREFECT" concurrency-limit create "$FLUXFLOW_GPU_TAG" "$GPU_SLOTS"
    fi
}

# read_secret VARIABLE: print the first line of the file named by $VARIABLE, checked to be USER:PASSWORD. Only bash
# builtins touch it, so the secret is on no process's command line; callers capture it with $(...) (a fork, no exec).
read_secret() {
    local variable="$1" path="${!1:-}" line=""
    if [[ ! -r "$path" || -d "$path" ]]; then
        echo "❌ $variable=$path: cannot read it" >&2
        return 1
    fi
    IFS= read -r line <"$path" || true
    line="${line%"${line##*[![:space:]]}"}"  # as Python's strip() in flows/credentials.py
    line="${line#"${line%%[![:space:]]*}"}"
    if [[ ! "$line" =~ ^[^:]+:.+$ ]]; then
        echo "❌ $variable=$path: its first line must be USER:PASSWORD (both non-empty)" >&2
        return 1
    fi
    printf '%s' "$line"
}

# is_loopback HOST: whether HOST is an address only this machine reaches.
is_loopback() {
    [[ "$1" == 127.* || "$1" == localhost || "$1" == ::1 ]]
}

# probe_host HOST: where this machine reaches a server bound to HOST (all interfaces: loopback).
probe_host() {
    if [[ "$1" == 0.0.0.0 || "$1" == :: ]]; then echo 127.0.0.1; else echo "$1"; fi
}

# refuse_open NAME HOST FILE_VARIABLE: a server on an address other hosts reach, without credentials, lets anyone in.
refuse_open() {
    echo "❌ refusing to start $1 on $2 without authentication: other hosts could reach it and use it with no" \
         "credentials. Put USER:PASSWORD in a file only you can read (chmod 600) and set $3 to it, or keep the" \
         "default host 127.0.0.1 and reach it through an SSH tunnel (docs/DISTRIBUTED.md)." >&2
    exit 2
}

# use_credentials: the client credentials of the secret files, exported for the prefect CLI, the worker and the flow
# runs it starts (a variable already set wins over its file, as in flows/credentials.py).
use_credentials() {
    local pair
    if [[ -z "${PREFECT_API_AUTH_STRING:-}" && -n "${FLUXFLOW_PREFECT_AUTH_FILE:-}" ]]; then
        PREFECT_API_AUTH_STRING="$(read_secret FLUXFLOW_PREFECT_AUTH_FILE)" || exit 2
        export PREFECT_API_AUTH_STRING
    fi
    if [[ -z "${MLFLOW_TRACKING_PASSWORD:-}" && -n "${FLUXFLOW_MLFLOW_AUTH_FILE:-}" ]]; then
        pair="$(read_secret FLUXFLOW_MLFLOW_AUTH_FILE)" || exit 2
        export MLFLOW_TRACKING_USERNAME="${pair%%:*}" MLFLOW_TRACKING_PASSWORD="${pair#*:}"
    fi
}

# check_credentials: fail with one line per server (Prefect, and MLflow when MLFLOW_TRACKING_URI is a server) that
# answers 401 to these credentials, before a worker polls or a deploy writes (flows/credentials.py).
check_credentials() {
    "$VENV_BIN/python" -m flows.credentials check
}
