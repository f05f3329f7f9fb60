"""The benchmark suite still runs: every benchmark once, on tiny shapes, with its summary."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_suite_runs(tmp_path):
    env = dict(os.environ, CAMDROP_BENCH_SMOKE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-only", "-q", "-p", "no:cacheprovider",
         f"--benchmark-json={tmp_path / 'bench.json'}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "camdrop_kernels benchmark summary" in out
    assert "Headline" in out and "Saved for backward" in out
    assert (tmp_path / "bench.json").stat().st_size > 0
