#!/usr/bin/env bash
# The prepared GPU check: CUDA tests + GPU benchmarks on a CUDA machine, in under 8 minutes.
#
#   OUT=/some/dir benchmarks/gpu_check.sh        (default OUT: ./gpu-results)
#
# Needs torch with CUDA, triton, pytest, pytest-benchmark and hypothesis (timm and
# torchvision for the peers); the project is used as a source tree (PYTHONPATH), not
# installed, and nothing is fetched. Logs and the benchmark JSON go to $OUT; a short
# table is printed last. Exit status: non-zero if any test failed.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PY="${PYTHON:-python3}"
status=0

{
  date -u
  "$PY" -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| device', torch.cuda.get_device_name(), '| capability', torch.cuda.get_device_capability())"
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv 2>/dev/null
} 2>&1 | tee "$OUT/env.txt"

# 1. CUDA tests, then the contract tests on the GPU with a smaller example budget (JIT compiles cost time).
CAMDROP_EXAMPLES_SCALE="${CAMDROP_EXAMPLES_SCALE:-0.2}" timeout 240 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_cuda.py tests/test_golden.py tests/test_hand_worked.py tests/test_seeding.py tests/test_api.py \
  tests/test_autograd.py tests/test_custom_op.py tests/test_contract.py 2>&1 | tee "$OUT/tests.log"
test_rc=${PIPESTATUS[0]}
[ "$test_rc" -ne 0 ] && status=1

# 2. GPU benchmarks (throughput, memory, mask-build share), JSON for benchmarks/report.py.
timeout 200 "$PY" -m pytest -q -p no:cacheprovider benchmarks/test_throughput.py --benchmark-only \
  --benchmark-json="$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}

# 3. The short table, last.
echo
echo "=== gpu_check: tests exit $test_rc, benchmarks exit $bench_rc ==="
grep -E "passed|failed|error" "$OUT/tests.log" | tail -1
if [ -s "$OUT/bench.json" ]; then
  "$PY" benchmarks/report.py --headline "$OUT/bench.json" | tee "$OUT/summary.txt"
fi
exit $status
