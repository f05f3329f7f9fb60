#!/usr/bin/env bash
# The prepared GPU check (issues 14 and 22), for a lent card, in at most 8 minutes (run it with
# timeout_s 540; the card is lent for 15 minutes of device time in all):
#
#   OUT=/some/dir benchmarks/gpu_check.sh        (default OUT: ./gpu-results)
#
# 1. environment; 2. the CUDA tests and the goldens (test_cuda.py without the slow fullgraph test,
# test_golden.py); 3. the host time per call, and the state kernel alone at three shapes, with
# float32 and bf16-tie CAMs (gpu_probe.py host state); 4. micro-benchmarks at (64, 256, 56, 56) bf16 (gpu_bench.py: the float32
# CAM and the bound layer's bf16 CAM, eager device time and graph time labelled, both multiply
# floors, the peers); 5. Nsight Compute on ONE state launch (SpeedOfLight, Occupancy, LaunchStats,
# WarpStateStats, SchedulerStats), where ncu works; 6. the timm resnet50 training step, eager and
# then under torch.compile with what time is left (gpu_resnet.py). Each stage has its own time box;
# a short table comes last (gpu_summary.py), and everything is tarred into $OUT/gpu_check.tgz (the
# device tool brings back a few files only). The project runs from the source tree (PYTHONPATH);
# nothing is fetched. Exit status: non-zero if a test failed.
#
# CAMDROP_GPU_DRY_RUN=1 runs every stage on the CPU at tiny sizes (no ncu; only the CUDA test
# file, which skips): the smoke test's proof that the script works before a card is lent.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./gpu-results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TRITON_INTERPRET=0
PY="${PYTHON:-python3}"
BUDGET="${GPU_CHECK_BUDGET:-470}"  # seconds for the whole script: 8 minutes less the tar and the summary
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

DRY="${CAMDROP_GPU_DRY_RUN:-0}"
# The working tree arrives without built extensions (*.so are ignored): build them against this
# machine's torch (the C++ op kernels are tied to its ABI; without them the Python kernels serve).
if [ "$DRY" != 1 ] || ! ls camdrop_kernels/_C*.so >/dev/null 2>&1; then
  echo "=== build: the native extensions (box $(box 90)s)"
  timeout "$(box 90)" "$PY" setup.py build_ext --inplace -j 8 > "$OUT/build.log" 2>&1 || tail -5 "$OUT/build.log"
fi
"$PY" -c "import camdrop_kernels.cpp as c, camdrop_kernels.backends as b; print('C++ op kernels:', 'loaded' if c.C else 'not loaded', '| native:', b.native_available())" 2>&1 | tee -a "$OUT/env.txt"
echo "=== tests (box $(box 130)s)"
TESTS=(tests/test_cuda.py tests/test_golden.py)
[ "$DRY" = 1 ] && TESTS=(tests/test_cuda.py)
# -v: a line per test as it ends, so a run cut by its time box still shows what passed;
# --durations: where the time went (Triton compiles count in the first test of each shape).
CAMDROP_EXAMPLES_SCALE="${CAMDROP_EXAMPLES_SCALE:-0.1}" timeout "$(box 130)" "$PY" -m pytest -v -rfE \
  --durations=15 -p no:cacheprovider -k "not fullgraph" "${TESTS[@]}" > "$OUT/tests.log" 2>&1
test_rc=$?
echo "tests passed: $(grep -c ' PASSED' "$OUT/tests.log")"
tail -20 "$OUT/tests.log"
[ "$test_rc" -ne 0 ] && status=1

echo "=== probe: host time per call; the state kernel alone, float32 and bf16-tie CAMs (box $(box 60)s)"
OUT="$OUT" timeout "$(box 60)" "$PY" benchmarks/gpu_probe.py host state > "$OUT/probe.log" 2>&1
grep -E "^  (host|state) " "$OUT/probe.log" | head -40

echo "=== bench (box $(box 110)s)"
timeout "$(box 110)" "$PY" benchmarks/gpu_bench.py --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"

echo "=== ncu: one state launch (box $(box 50)s)"
if [ "$DRY" = 1 ]; then
  echo "dry run: no ncu" | tee "$OUT/ncu.log"
elif command -v ncu >/dev/null; then
  timeout "$(box 50)" ncu --clock-control none --profile-from-start off --target-processes all \
    -k regex:state_kernel -c 1 \
    --section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats \
    --section SchedulerStats -f -o "$OUT/ncu_state" \
    "$PY" benchmarks/gpu_bench.py --one-forward > "$OUT/ncu.log" 2>&1 \
    && ncu --import "$OUT/ncu_state.ncu-rep" --page details > "$OUT/ncu.txt" 2>>"$OUT/ncu.log"
  tail -3 "$OUT/ncu.log"
else
  echo "ncu not found" | tee "$OUT/ncu.log"
fi

echo "=== resnet50 eager (box $(box 80)s)"
timeout "$(box 80)" "$PY" benchmarks/gpu_resnet.py --out "$OUT/resnet.json" 2>&1 | tee "$OUT/resnet.log"

# Last, with what time is left: the resnet50 step under torch.compile (inductor compiles each model
# for a minute or so; the eager figures above do not wait for it).
echo "=== resnet50 compiled (box $(box 150)s)"
if [ "$(left)" -gt 90 ] || [ "$DRY" = 1 ]; then
  timeout "$(box 150)" "$PY" benchmarks/gpu_resnet.py --compile --skip-timm --rounds 10 --out "$OUT/resnet_compiled.json" \
    > "$OUT/resnet_compiled.log" 2>&1
  tail -4 "$OUT/resnet_compiled.log"
else
  echo "skipped: $(left)s left" | tee "$OUT/resnet_compiled.log"
fi

echo
echo "=== gpu_check: tests exit $test_rc, $(( $(date +%s) - start ))s ==="
"$PY" benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
tar -czf "$OUT/gpu_check.tgz" -C "$OUT" --exclude gpu_check.tgz . 2>/dev/null && echo "tarred: $OUT/gpu_check.tgz"
exit $status
