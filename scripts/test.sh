#!/usr/bin/env bash
# Set up everything from scratch (venv, CPU torch, the project) and run the test suite.
# Usage: bash scripts/test.sh [pytest args...]   (e.g. -k golden; a first argument -h/--help prints this text)
set -euo pipefail
if [[ "${1:-}" == -h || "${1:-}" == --help ]]; then awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0; fi
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
"$VPY" -m pip install -q --upgrade pip >/dev/null
# Install torch first (the CPU wheel on these machines), so no requirement pulls a multi-GB CUDA build.
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install -q "torch==2.13.0"
fi
# app: Gradio for the explorer, whose tests (one in a real browser) are part of the suite
"$VPY" -m pip install -q -e ".[test,app]"
exec "$VPY" -m pytest "$@"
