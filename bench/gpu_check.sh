#!/usr/bin/env bash
# The real-size GPU checks (bench/gpu_check.py): eager vs compiled flow-step throughput and MFU of
# configs/real_256.yaml's model at batch 64/128 in bf16, a 2-step pipeline end to end, and a 2-process torchrun run
# when two GPUs are present. Stops at 10 minutes whatever happens. Arguments go to bench.gpu_check (e.g. --dry-run).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
export DO_NOT_TRACK=1 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true
exec timeout --kill-after=10 600 "$PY" -m bench.gpu_check "$@"
