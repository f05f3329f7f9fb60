"""Benchmark set-up: device, inputs, a timing helper (synchronising on CUDA), and the derived report.

``pytest benchmarks/ --benchmark-only`` runs on CUDA when a GPU is present, else on the
CPU. ``CAMDROP_BENCH_SMOKE=1`` shrinks every shape so the suite runs in seconds (the
test suite uses it to check that every benchmark still works).
"""
from __future__ import annotations

import os
import time

import pytest
import torch

import report

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SMOKE = os.environ.get("CAMDROP_BENCH_SMOKE", "0") not in ("", "0")
# Seconds of timed calls per benchmark (rounds adapt to the contender's speed).
BUDGET_S = 0.02 if SMOKE else (0.25 if DEVICE.type == "cuda" else 0.4)


def sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def make_inputs(shape, dtype, layout, requires_grad=False, seed=0):
    """x (N, C, *S) (Gaussian: no exact zeros), cam (N, *S) and alpha (N, C), seeded."""
    g = torch.Generator().manual_seed(seed)
    N, C, *S = shape
    x = torch.randn(shape, generator=g).to(device=DEVICE, dtype=dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if len(S) == 2 else torch.channels_last_3d)
    cam = torch.randn(N, *S, generator=g).to(DEVICE)
    alpha = torch.randn(N, C, generator=g).to(DEVICE)
    return x.requires_grad_(requires_grad), cam, alpha


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward during ``fn()``."""
    storages = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    return sum(storages.values())


def timed(benchmark, fn, *, group: str, info: dict):
    """Time ``fn`` with pytest-benchmark (pedantic, adaptive rounds), synchronising on CUDA."""
    def call():
        out = fn()
        sync()
        return out

    for _ in range(2):  # warm up: compilation, caches, allocator
        call()
    t0 = time.perf_counter()
    call()
    one = max(time.perf_counter() - t0, 1e-6)
    rounds = int(min(max(BUDGET_S / one, 1 if one > 2.0 else 3), 500))
    benchmark.group = group
    benchmark.extra_info.update(info)
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0 if one > 2.0 else 1)


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["camdrop_device"] = report.device_name()


def pytest_configure(config):
    # Shorter pytest-benchmark tables (the derived summary after them carries the comparisons).
    if getattr(config.option, "benchmark_columns", None) == ["min", "max", "mean", "stddev", "median", "iqr",
                                                               "outliers", "ops", "rounds", "iterations"]:
        config.option.benchmark_columns = ["median", "iqr", "rounds"]


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    rows = [b.as_dict(include_data=False) for b in session.benchmarks]
    for line in report.render(rows, device=report.device_name()):
        terminalreporter.write_line(line)
