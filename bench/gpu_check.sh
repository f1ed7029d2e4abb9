#!/usr/bin/env bash
# The one GPU check (under 8 minutes on one H100: every part has a time limit, 460 s in all):
# kernel correctness on the device (ours against the fp32 reference, cuDNN and jax's bundled
# Pallas attention), attention throughput against the same peers, the phi-1-small / phi-1 train
# step (bf16 and fp16, xla vs pallas) in tokens/s and MFU against the card's peak, and the
# `phi1 plan` calibration: the plan's per-device bytes beside the device's measured peak
# (memory_stats) for phi-1-small and phi-1. Run from the repository root:
#   bash bench/gpu_check.sh [OUT_DIR]
# Everything printed is also kept in OUT_DIR (default gpu_check/); the exit status is non-zero if
# any part failed.
set -u
OUT=${1:-gpu_check}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}  # the tests' conftest defaults to CPU otherwise
export XLA_PYTHON_CLIENT_PREALLOCATE=false
status=0

step() {  # step NAME SECONDS COMMAND...: one part, time-limited, logged, its status kept
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start))s"
  [ "$rc" -eq 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# On a GPU the Pallas kernels run compiled (interpret mode is for CPU only): these are the
# kernel-vs-reference tests on the device.
step kernels 100 "$PY" -m pytest -q -p no:cacheprovider tests/test_flash_attention.py \
  -k "gpu or default_blocks or packed or fully_masked or float16"
step attention 100 "$PY" bench/attention.py --iters 10
step train_step 140 "$PY" bench/gpu_train_step.py --steps 3
# The plan's host-device compile needs the CPU backend beside the GPU.
step plan_small 60 env JAX_PLATFORMS=cuda,cpu "$PY" bench/plan_calibration.py --preset phi1_small
step plan_phi1 60 env JAX_PLATFORMS=cuda,cpu "$PY" bench/plan_calibration.py --preset phi1
echo "summary lines:"
grep -h '"name"\|"peak_bytes"' "$OUT"/*.log
exit $status
