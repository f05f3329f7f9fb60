#!/usr/bin/env bash
# The native kernels under AddressSanitizer and UndefinedBehaviorSanitizer.
#
# Builds both extensions (camdrop_kernels._native and _native_testing) with
#   -fsanitize=address,undefined -fno-sanitize-recover=undefined (+ float-cast-overflow)
# into a temporary copy of the package (never over the normal build), then runs there, with the
# compiler's libasan preloaded (python itself is not instrumented) and ASAN_OPTIONS=detect_leaks=0:
#   1. the native tests (tests/test_native.py, test_philox.py, and the native cases of
#      test_golden.py, test_contract.py and test_ops_fuzz.py),
#   2. tools/native_fuzz.py: thousands of hostile calls into _native directly (misaligned, empty,
#      storage-less, huge-stride, overlapping, read-only arguments; wrong types, shapes, values).
# Any sanitizer report (written to files, so reports from subprocesses count too), crash or test
# failure fails the script. The same idea as PyTorch's ASan CI job (an instrumented build, libasan
# preloaded into an uninstrumented python, detect_leaks=0).
#
#   tools/sanitize.sh             PYTHON=... (default python3), CXX=... (default g++),
#                                 FUZZ_CALLS=... (default 4000)
# Exit status: 0 clean; 1 a report or a failure; 77 no compiler or no libasan (nothing checked).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
CXX=${CXX:-g++}
FUZZ_CALLS=${FUZZ_CALLS:-4000}

if ! command -v "$CXX" >/dev/null 2>&1; then
  echo "sanitize: no C++ compiler ($CXX)" >&2
  exit 77
fi
LIBASAN=$("$CXX" -print-file-name=libasan.so)
if [ ! -e "$LIBASAN" ] || [ "$LIBASAN" = "libasan.so" ]; then
  echo "sanitize: $CXX has no libasan.so (install the compiler's sanitizer runtime)" >&2
  exit 77
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/camdrop-sanitize.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
start=$SECONDS

# A copy of what the build and the tests read: the package (without its built extensions), the
# sources, the tests and their data, the fuzz.
mkdir -p "$WORK/tools"
cp -r "$ROOT/csrc" "$ROOT/tests" "$WORK/"
cp "$ROOT/setup.py" "$ROOT/pyproject.toml" "$WORK/"
[ -d "$ROOT/golden" ] && cp -r "$ROOT/golden" "$WORK/"
cp "$ROOT/tools/native_fuzz.py" "$WORK/tools/"
(cd "$ROOT" && tar cf - --exclude='__pycache__' --exclude='*.so' camdrop_kernels) | (cd "$WORK" && tar xf -)

SAN="-fsanitize=address,undefined,float-cast-overflow -fno-sanitize-recover=undefined,float-cast-overflow"
echo "sanitize: building with $SAN in $WORK"
(cd "$WORK" && CXX="$CXX" CC="$CXX" CFLAGS="-g -fno-omit-frame-pointer $SAN -fno-wrapv" \
   CXXFLAGS="-g -fno-omit-frame-pointer $SAN -fno-wrapv" LDFLAGS="-fsanitize=address,undefined" \
   CAMDROP_NATIVE_TESTING=1 "$PYTHON" setup.py -q build_ext --inplace >"$WORK/build.log" 2>&1) || {
  cat "$WORK/build.log" >&2
  echo "sanitize: the build failed" >&2
  exit 1
}
for ext in _native _native_testing; do
  so=$(ls "$WORK"/camdrop_kernels/$ext.*.so 2>/dev/null || true)
  if [ -z "$so" ] || ! nm -D "$so" | grep -q __asan_; then
    cat "$WORK/build.log" >&2
    echo "sanitize: camdrop_kernels.$ext was not built with ASan" >&2
    exit 1
  fi
done
echo "sanitize: built in $((SECONDS - start)) s"

mkdir -p "$WORK/reports"
# libstdc++ right after libasan: torch throws C++ exceptions, and ASan's __cxa_throw interceptor needs
# the real one loaded when it starts (python itself does not link libstdc++).
LIBSTDCXX=$("$CXX" -print-file-name=libstdc++.so)
export LD_PRELOAD="$LIBASAN:$LIBSTDCXX${LD_PRELOAD:+:$LD_PRELOAD}"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1:log_path=$WORK/reports/asan:allocator_may_return_null=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:log_path=$WORK/reports/ubsan"
export PYTHONDONTWRITEBYTECODE=1
status=0
cd "$WORK"
# The package imported is $WORK's (the working directory comes first on sys.path).
"$PYTHON" -c "import camdrop_kernels, camdrop_kernels._native as n; assert n.__file__.startswith('$WORK'), n.__file__"

echo "sanitize: native tests"
"$PYTHON" -m pytest -q -x -p no:cacheprovider tests/test_native.py tests/test_philox.py tests/test_ops_fuzz.py \
  "tests/test_golden.py" "tests/test_contract.py" -k "native or philox or hostile or aliased or every_backend or test_native" \
  --durations=5 \
  || status=1
echo "sanitize: $FUZZ_CALLS hostile calls (tools/native_fuzz.py)"
"$PYTHON" tools/native_fuzz.py --calls "$FUZZ_CALLS" --seed 1 || status=1

if compgen -G "$WORK/reports/*" >/dev/null; then
  echo "sanitize: sanitizer reports:" >&2
  for f in "$WORK"/reports/*; do
    echo "--- $f" >&2
    cat "$f" >&2
  done
  status=1
fi
echo "sanitize: $([ $status -eq 0 ] && echo clean || echo FAILED) in $((SECONDS - start)) s"
exit $status
