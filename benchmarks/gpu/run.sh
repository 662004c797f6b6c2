#!/usr/bin/env bash
# The GPU benchmark in one command (under 10 minutes on one H100/H200-class GPU):
#   benchmarks/gpu/run.sh [OUT_DIR] [extra bench.py arguments, e.g. --skip trl]
# Results: OUT_DIR/results.json (default: $OUT, else ./gpu_bench_out). PYTHON selects the interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT_DIR="${1:-${OUT:-gpu_bench_out}}"
shift || true
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM=false
PY="${PYTHON:-python}"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 580 "$PY" "$ROOT/benchmarks/gpu/bench.py" --device cuda --dtype bfloat16 --out "$OUT_DIR" "$@"
