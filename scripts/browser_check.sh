#!/usr/bin/env bash
# Headless-Chromium check of both UIs (scripts/browser_check.py): installs Debian's `chromium` and `chromium-driver`
# with apt-get when they are missing (root, or sudo), then runs the check with this checkout's virtualenv.
# Arguments are passed on, e.g. --flow-run-id <uuid> --prefect-url http://127.0.0.1:4200 --mlflow-url ...
# Needs `make server` and `make mlflow-ui` running and a finished fluxflow-pipeline run (docs/OPERATIONS.md).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"

if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
    SUDO=""; [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
    echo "installing chromium and chromium-driver (apt-get)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
fi
exec "${FLUXFLOW_VENV_BIN:-$REPO_ROOT/.venv/bin}/python" "$REPO_ROOT/scripts/browser_check.py" "$@"
