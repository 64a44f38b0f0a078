#!/usr/bin/env bash
# `make deploy`: registers every deployment in deployments/prefect.yaml (fluxflow-pipeline/manual and
# fluxflow-pipeline/nightly-retrain) with the server at PREFECT_API_URL (default the loopback one of `make server`).
# Re-running it updates them in place. Creates the `gpu` pool and limit first when missing.
# A server that asks for credentials: FLUXFLOW_PREFECT_AUTH_FILE, as for scripts/worker.sh.
set -euo pipefail
source "$(dirname "$0")/_service.sh"
take_arguments "" "$@"
# Entrypoints in prefect.yaml are module paths (flows.pipeline_flow:...), imported from the repository root.
cd "$REPO_ROOT"

use_local_server
ensure_pool_and_limit
# Without FLUXFLOW_HOME: `prefect deploy` fills every {{ $VAR }} it finds set in its own environment, which would fix
# the pull step's checkout to this one; unset, the placeholder is stored and filled per run, in the worker's
# environment (each host's or image's own checkout).
env -u FLUXFLOW_HOME "$PREFECT" --no-prompt deploy --all --prefect-file deployments/prefect.yaml
echo "deployed; run one with:"
echo "  export PREFECT_API_URL=$PREFECT_API_URL"
echo "  $PREFECT deployment run fluxflow-pipeline/manual --param config=configs/quickstart.yaml --watch"
echo "and start a worker to execute it: make worker"
