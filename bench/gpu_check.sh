#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): correctness, a training and an analysis run, and the DUSt3R,
# SAE and pipeline benchmarks, in under 8 minutes on one CUDA GPU; writes results/gpu_check/gpu_check.{json,md}.
#   bash bench/gpu_check.sh                 # PYTHON=/path/to/python to pick the interpreter
#   bash bench/gpu_check.sh --tiny --device=cpu --out=/tmp/gc   # the CPU (CI) mode
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python}" bench/gpu_check.py "$@"
