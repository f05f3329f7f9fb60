"""Shared test set-up: which backends run here, and bit-exact comparison helpers.

Without a GPU, Triton kernels run in the interpreter: TRITON_INTERPRET must be set
before triton kernels are defined, so it is set here, before any test imports them.
"""
import contextlib
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from camdrop_kernels import backends, torch_backend  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = backends.triton_available()
HAS_NATIVE = torch_backend.native_available()
# The device and the implementations the contract tests run: each backend, and the torch
# backend's plain-torch path too where its native CPU extension is built.
DEVICE = "cuda" if HAS_CUDA else "cpu"
BACKENDS = ["torch"] + (["torch-pure"] if HAS_NATIVE else []) + (["triton"] if HAS_TRITON else [])
# Without a GPU, Triton runs in its interpreter at about 5 ms per program instance: tests
# that make hundreds of calls (statistics over seeds, gradcheck) run it on CUDA only; the
# contract tests, which compare it with the reference bit for bit, run it on small inputs.
INTERPRETED = {"triton"} if HAS_TRITON and not HAS_CUDA else set()
# Scales the hypothesis example counts (benchmarks/gpu_check.sh lowers it to fit its time box).
EXAMPLES_SCALE = float(os.environ.get("CAMDROP_EXAMPLES_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * EXAMPLES_SCALE))

_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}


def bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns, so that NaN, -0.0 and +0.0 compare exactly."""
    return t.contiguous().view(_INT_VIEW[t.dtype])


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, what: str = "output") -> None:
    """Equal bit patterns (so -0.0 != +0.0); any NaN matches any NaN (payloads are not part of the contract)."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    actual, expected = actual.cpu(), expected.cpu()
    a_nan, e_nan = torch.isnan(actual), torch.isnan(expected)
    bad = ((bits(actual) != bits(expected)) & ~(a_nan & e_nan)).nonzero()
    assert bad.numel() == 0, (
        f"{what}: {bad.shape[0]} of {actual.numel()} elements differ, first at {tuple(bad[0].tolist())}: "
        f"{actual.cpu()[tuple(bad[0])]} != {expected.cpu()[tuple(bad[0])]}"
    )


@contextlib.contextmanager
def variant(name: str):
    """Run an implementation from BACKENDS: yields the backend name to pass to camdrop."""
    if name == "torch-pure":
        with torch_backend.native_disabled():
            yield "torch"
    else:
        yield name


@pytest.fixture(params=BACKENDS)
def backend(request):
    with variant(request.param) as name:
        yield name


@pytest.fixture(params=[b for b in BACKENDS if b not in INTERPRETED])
def compiled_backend(request):
    """Backends that run natively here (not in an interpreter): for tests making many calls."""
    with variant(request.param) as name:
        yield name
