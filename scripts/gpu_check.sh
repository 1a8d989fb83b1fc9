#!/usr/bin/env bash
# The prepared GPU check (benchmarks/gpu_check.py): device tests, SD-512 sampling plain vs A&E in fp32 and fp16,
# A&E peak memory in half precision, inversion steps/s with and without the posterior cache, SDPA vs explicit
# attention. One table, printed and written as JSON.
#   bash scripts/gpu_check.sh                         # one CUDA device, random weights at SD v1 size
#   bash scripts/gpu_check.sh --device cpu --tiny     # the same code path on the CPU, tiny sizes (CI)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
