#!/usr/bin/env bash
# Sweep benchmark on one GPU, in under five minutes: scenarios/s of the vectorised dual sweep at
# N = 10,000, 100,000 and 1,000,000 (the `risk` design of the default problem), against SciPy SLSQP
# timed on a small sample (SciPy runs one scenario at a time, on the CPU).
# Writes benchmarks/results/sweep_speed_gpu.{md,json}.
#
#   bash benchmarks/gpu.sh            # needs jax with CUDA: pip install -e ".[dev]" "jax[cuda12]==0.10.2"
#   N="10000 100000" bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || { echo "no NVIDIA GPU visible" >&2; exit 2; }
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda,cpu}
export XLA_PYTHON_CLIENT_PREALLOCATE=false
"$PY" -c "import jax; d = jax.devices(); print('devices:', d); assert d[0].platform == 'gpu', d"
timeout "${TIMEOUT_S:-290}" "$PY" benchmarks/sweep_speed.py --n ${N:-10000 100000 1000000} --chunk ${CHUNK:-131072} \
  --baseline-sample ${SAMPLE:-8} --no-latency --tag gpu
