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
    import gpu_order  # noqa: E402  (scans, reductions and stores in a GPU's order: see its docstring)

    gpu_order.install()

from camdrop_kernels import backends  # noqa: E402

# Every test sees the same random numbers on every run: module-level tensors are drawn after this
# seed, and each test starts from a seed of its own (below). Hypothesis manages its own draws.
torch.manual_seed(20261127)


@pytest.fixture(autouse=True)
def _seeded(request):
    import zlib

    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))

HAS_CUDA = torch.cuda.is_available()
HAS_TRITON = backends.triton_available()
HAS_NATIVE = backends.native_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
# The implementations the contract tests run, by registry name: the native CPU kernels, plain
# torch, and Triton (on CUDA, or in its interpreter on CPU tensors).
BACKENDS = (["native"] if HAS_NATIVE and not HAS_CUDA else []) + ["plain"] + (["triton"] if HAS_TRITON else [])
# Triton's interpreter runs about 5 ms per program instance: tests that make hundreds of calls
# run it on CUDA only; the contract tests, which compare it with the reference, use small inputs.
INTERPRETED = {"triton"} if HAS_TRITON and not HAS_CUDA else set()
# Scales the hypothesis example counts (benchmarks/gpu_check.sh lowers it to fit its time box).
EXAMPLES_SCALE = float(os.environ.get("CAMDROP_EXAMPLES_SCALE", "1"))


def examples(n: int) -> int:
    return max(1, int(n * EXAMPLES_SCALE))


_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64, torch.int32: torch.int32, torch.int64: torch.int64}


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
        f"{actual[tuple(bad[0])]} != {expected[tuple(bad[0])]}")


@contextlib.contextmanager
def using(name: str):
    """Run the ops inside on backend ``name`` (a registry name), forward and backward."""
    with backends.using(name):
        yield


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each implementation in turn; the test body runs under it (the API's backend='auto')."""
    with using(request.param):
        yield request.param


@pytest.fixture(params=[b for b in BACKENDS if b not in INTERPRETED])
def fast_backend(request):
    """Backends that run natively here (not in an interpreter): for tests making many calls."""
    with using(request.param):
        yield request.param


# On a GPU, Triton compiles every new specialisation on first use (1-15 s each under Triton 3.6):
# the run's summary says how many and how long, so a slow first run on a card can be read.
_COMPILES = {}


def _time_triton_compiles() -> None:
    import time

    from triton.runtime.jit import JITFunction

    inner = JITFunction._do_compile

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(self, *args, **kwargs)
        finally:
            count, seconds = _COMPILES.get(self.__name__, (0, 0.0))
            _COMPILES[self.__name__] = (count + 1, seconds + time.perf_counter() - t0)

    JITFunction._do_compile = timed


if HAS_CUDA and HAS_TRITON:
    try:
        _time_triton_compiles()
    except (ImportError, AttributeError):  # another Triton layout: no figures, nothing else changes
        pass


def pytest_terminal_summary(terminalreporter):
    if _COMPILES:
        terminalreporter.write_line("Triton compiles (kernel: count, seconds): " + ", ".join(
            f"{name}: {count}, {seconds:.1f}" for name, (count, seconds) in sorted(_COMPILES.items())))
