"""The native kernels under AddressSanitizer and UndefinedBehaviorSanitizer (tools/sanitize.sh):
an instrumented build in a temporary copy, the native tests and thousands of hostile calls under
it; any report fails. About two to three minutes on 2 cores."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_native_code_is_clean_under_asan_and_ubsan():
    in_ci = os.environ.get("CI") == "true"
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        if in_ci:
            pytest.fail(f"CI must have a C++ compiler ({cxx}) to run the sanitizer build")
        pytest.skip(f"no C++ compiler ({cxx})")
    libasan = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(libasan) or not os.path.exists(libasan):
        pytest.skip(f"{cxx} has no libasan.so (the compiler's sanitizer runtime is not installed)")
    proc = subprocess.run(["bash", str(ROOT / "tools" / "sanitize.sh")], capture_output=True, text=True,
                          timeout=1200, env={**os.environ, "PYTHON": sys.executable, "CXX": cxx})
    if proc.returncode == 77 and not in_ci:
        pytest.skip(proc.stderr.strip()[-500:])
    assert proc.returncode == 0, f"tools/sanitize.sh failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
    assert "sanitize: clean" in proc.stdout, proc.stdout[-2000:]
