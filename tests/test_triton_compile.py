"""Every Triton kernel compiles for sm_80 and sm_90 here, without a GPU (the interpreter checks less)."""
import os
import subprocess
import sys

import pytest

from conftest import HAS_TRITON


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_kernels_compile_for_sm80_and_sm90():
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run(
        [sys.executable, "-m", "camdrop_kernels.triton_backend.compile_check", "--arch", "80", "90"],
        capture_output=True, text=True, env=env, timeout=1200,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("sm_")]
    assert any(" select[" in line for line in lines) and any(" mask[" in line for line in lines)
    assert any(" apply[" in line for line in lines)
    assert all(line.endswith("s)") and ": ok (" in line for line in lines), out[-6000:]
    assert {line.split()[0] for line in lines} == {"sm_80", "sm_90"}
