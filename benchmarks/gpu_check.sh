#!/usr/bin/env bash
# The prepared GPU check (issue 14), for a lent card, in about 9 minutes (run it with timeout_s 580):
#
#   OUT=/some/dir benchmarks/gpu_check.sh        (default OUT: ./gpu-results)
#
# 1. environment; 2. micro-benchmarks at (64, 256, 56, 56) bf16, both gamma modes, NCHW and
# channels_last, timed by wall clock (sync per call), CUDA events and CUDA-graph replay, beside
# the copy and multiply measured in the same run, and the peers (gpu_bench.py); 3. timm resnet50
# training step, bf16 channels_last batch 128: plain, camdrop (convert_resnet), timm DropBlock
# (gpu_resnet.py); 4. an Nsight Compute profile of one forward per gamma mode, where ncu works;
# 5. the host time per call and the state kernel's variants (gpu_probe.py host state); 6. the CUDA
# tests and the Triton path tests; 7. the resnet50 step under torch.compile, with what time is left.
# Each stage has its own time box and writes its log and JSON to $OUT; a short table comes last
# (gpu_summary.py). $OUT holds more than 8 files: the device tool brings back 8, so tar it.
# The project runs from the source tree (PYTHONPATH); nothing is fetched. Exit status: non-zero
# if a test failed.
#
# CAMDROP_GPU_DRY_RUN=1 runs every stage on the CPU at tiny sizes (no ncu; only the CUDA test
# file, which skips): the smoke test's proof that the script works before a card is lent.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-530}"  # seconds for the whole script (the card is lent for 15 minutes)
start=$(date +%s)
left() { echo $(( BUDGET - ($(date +%s) - start) )); }
box() { local want=$1 l; l=$(left); [ "$l" -lt "$want" ] && want=$l; [ "$want" -lt 10 ] && want=10; echo "$want"; }
status=0

{
  date -u
  "$PY" -c "
import torch, triton
dev = ('cpu (dry run)',) if not torch.cuda.is_available() else (torch.cuda.get_device_name(), '| capability', torch.cuda.get_device_capability(), '| SMs', torch.cuda.get_device_properties(0).multi_processor_count)
print('torch', torch.__version__, '| triton', triton.__version__, '| device', *dev)"
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit,driver_version --format=csv 2>/dev/null
  command -v ncu >/dev/null && ncu --version | tail -1
} 2>&1 | tee "$OUT/env.txt"

echo "=== bench (box $(box 110)s)"
timeout "$(box 110)" "$PY" benchmarks/gpu_bench.py --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"

echo "=== resnet50 (box $(box 110)s)"
timeout "$(box 110)" "$PY" benchmarks/gpu_resnet.py --out "$OUT/resnet.json" 2>&1 | tee "$OUT/resnet.log"

echo "=== probe: host time per call, state-kernel variants (box $(box 60)s)"
OUT="$OUT" timeout "$(box 60)" "$PY" benchmarks/gpu_probe.py host state > "$OUT/probe.log" 2>&1
grep -E "^  (host|state) " "$OUT/probe.log" | head -40

DRY="${CAMDROP_GPU_DRY_RUN:-0}"
echo "=== ncu (box $(box 70)s)"
if [ "$DRY" = 1 ]; then
  echo "dry run: no ncu" | tee "$OUT/ncu.log"
elif command -v ncu >/dev/null; then
  timeout "$(box 70)" ncu --clock-control none --profile-from-start off --target-processes all \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section LaunchStats --section Occupancy \
    --section WarpStateStats --section SchedulerStats -f -o "$OUT/ncu_forward" \
    "$PY" benchmarks/gpu_bench.py --one-forward > "$OUT/ncu.log" 2>&1 \
    && ncu --import "$OUT/ncu_forward.ncu-rep" --page details > "$OUT/ncu.txt" 2>>"$OUT/ncu.log"
  tail -3 "$OUT/ncu.log"
else
  echo "ncu not found" | tee "$OUT/ncu.log"
fi

echo "=== tests (box $(box 300)s)"
TESTS=(tests/test_cuda.py tests/test_triton_paths.py tests/test_golden.py tests/test_hand_worked.py)
[ "$DRY" = 1 ] && TESTS=(tests/test_cuda.py)
# -v: a line per test as it ends, so a run cut by its time box still shows what passed;
# --durations: where the time went (Triton compiles count in the first test of each shape).
CAMDROP_EXAMPLES_SCALE="${CAMDROP_EXAMPLES_SCALE:-0.1}" timeout "$(box 300)" "$PY" -m pytest -v -rfE \
  --durations=15 -p no:cacheprovider "${TESTS[@]}" > "$OUT/tests.log" 2>&1
test_rc=$?
echo "tests passed: $(grep -c ' PASSED' "$OUT/tests.log")"
tail -40 "$OUT/tests.log"
[ "$test_rc" -ne 0 ] && status=1

# Last, with what time is left: the resnet50 step under torch.compile (inductor compiles each model
# for a minute or so; the eager figures above do not wait for it).
echo "=== resnet50 compiled (box $(box 200)s)"
if [ "$(left)" -gt 120 ] || [ "$DRY" = 1 ]; then
  timeout "$(box 200)" "$PY" benchmarks/gpu_resnet.py --compile --skip-timm --rounds 10 --out "$OUT/resnet_compiled.json" \
    > "$OUT/resnet_compiled.log" 2>&1
  tail -4 "$OUT/resnet_compiled.log"
else
  echo "skipped: $(left)s left" | tee "$OUT/resnet_compiled.log"
fi

echo
echo "=== gpu_check: tests exit $test_rc, $(( $(date +%s) - start ))s ==="
"$PY" benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
exit $status
