#!/usr/bin/env bash
# Every GPU figure the kit promises, in one table with its targets (at most 8 minutes on one H200).
# Usage: benchmarks/gpu_suite.sh [--tiny] [--data DIR] [--json FILE]   (--tiny: test models on CPU, seconds)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
exec "$PY" benchmarks/gpu_suite.py "$@"
