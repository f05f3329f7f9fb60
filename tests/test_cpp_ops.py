"""The C++ op kernels (camdrop_kernels._C): built and loaded here (in CI it must be), the same
results bit for bit and the same refusals as the Python kernels they stand in for, and the
Python kernels still serving, exactly, where _C does not load."""
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from camdrop_kernels import cpp
from camdrop_kernels.options import Options

from conftest import assert_bitwise_equal, examples

needs_cpp = pytest.mark.skipif(cpp.C is None, reason="camdrop_kernels._C is not built here")
OPS = torch.ops.camdrop_kernels


def test_cpp_ops_are_built_in_ci():
    if os.environ.get("CI") and cpp.C is None:
        pytest.fail("camdrop_kernels._C was not built: the C++ op kernels are part of the product")


def _case(seed: int, rank: int, dtype, layout: str, mode: str, normalize: str, shape: str):
    g = torch.Generator().manual_seed(seed)
    S = {1: (11,), 2: (6, 5), 3: (3, 4, 5)}[rank]
    N, C = 3, 7
    x = torch.randn(N, C, *S, generator=g).to(dtype)
    if layout == "channels_last" and rank == 2:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = torch.randn(N, 2 * C, *S, generator=g).to(dtype)[:, ::2]
    cam = torch.randn(N, *S, generator=g).to(torch.bfloat16).to(torch.float32)  # (ties, as under autocast)
    alpha = torch.randn(N, C, generator=g)
    opts = Options.get(rank, 3, None, 0.5, shape, normalize, mode, 1.0)
    return x, cam, alpha, torch.tensor(seed), torch.tensor([0.7], dtype=torch.float64), opts.key


@needs_cpp
@settings(max_examples=examples(60), deadline=None)
@given(seed=st.integers(0, 2**31), rank=st.sampled_from([1, 2, 3]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
       layout=st.sampled_from(["contiguous", "channels_last", "strided"]),
       mode=st.sampled_from(["eligible", "dropblock"]), normalize=st.sampled_from(["batch", "sample", "none"]),
       shape=st.sampled_from(["square", "diamond"]))
def test_cpp_kernels_equal_the_python_kernels(seed, rank, dtype, layout, mode, normalize, shape):
    args = _case(seed, rank, dtype, layout, mode, normalize, shape)
    got = OPS.camdrop(*args)
    want = OPS._python_camdrop(*args)
    for g, w, name in zip(got, want, ("y", "slots", "bits", "scale", "dropped", "rate")):
        assert_bitwise_equal(g, w, name)
    for g, w in zip(OPS.camdrop_state(*args), OPS._python_camdrop_state(*args)):
        assert_bitwise_equal(g, w)
    x = args[0]
    slots, bits, scale = got[1:4]
    assert_bitwise_equal(OPS.camdrop_apply(x, slots, bits, scale), OPS._python_camdrop_apply(x, slots, bits, scale))
    a, b = x.clone(), x.clone()
    OPS.camdrop_apply_(a, slots, bits, scale)
    OPS._python_camdrop_apply_(b, slots, bits, scale)
    assert_bitwise_equal(a, b)


@needs_cpp
@pytest.mark.parametrize("bad", ["x dtype", "x rank", "options", "cam shape", "alpha shape", "seed dtype",
                                 "rate value", "slots dtype", "slot value", "bits shape", "scale dtype"])
def test_cpp_kernels_refuse_what_the_python_kernels_refuse(bad):
    x, cam, alpha, seed, rate, key = _case(0, 2, torch.float32, "contiguous", "eligible", "batch", "square")
    slots, bits, scale = OPS.camdrop_state(x, cam, alpha, seed, rate, key)[:3]
    state_args = [x, cam, alpha, seed, rate, key]
    apply_args = [x, slots, bits, scale]
    which = state_args
    if bad == "x dtype":
        state_args[0] = x.to(torch.int32)
    elif bad == "x rank":
        state_args[0] = x[0]
    elif bad == "options":
        state_args[5] = "2|3|-|-|square|batch|eligible"
    elif bad == "cam shape":
        state_args[1] = cam[:, :-1]
    elif bad == "alpha shape":
        state_args[2] = alpha[:, 1:]
    elif bad == "seed dtype":
        state_args[3] = seed.to(torch.int32)
    elif bad == "rate value":
        state_args[4] = torch.tensor([1.5], dtype=torch.float64)
    else:
        which = apply_args
        if bad == "slots dtype":
            apply_args[1] = slots.long()
        elif bad == "slot value":
            apply_args[1] = torch.full_like(slots, 7)
        elif bad == "bits shape":
            apply_args[2] = bits[:, :, :-1]
        else:
            apply_args[3] = scale.double()
    ops = (OPS.camdrop, OPS._python_camdrop) if which is state_args else (OPS.camdrop_apply,
                                                                           OPS._python_camdrop_apply)
    errors = []
    for op in ops:
        with pytest.raises((TypeError, ValueError)) as info:
            op(*which)
        errors.append(info.value)
    assert type(errors[0]) is type(errors[1]), errors
    if bad == "options":
        assert all("is not a valid Options.key" in str(e) for e in errors), errors
    elif bad != "slot value":  # (the slot values are checked in the native stages, with their own words)
        assert all(str(e).startswith("camdrop_kernels op:") for e in errors), errors


def _accepts(op, args) -> bool:
    try:
        op(*args)
        return True
    except ValueError as e:
        assert "is not a valid Options.key" in str(e), e
        return False


@needs_cpp
@settings(max_examples=examples(60), deadline=None)
@given(value=st.one_of(st.floats(0.0, 1e30, allow_nan=False), st.sampled_from([0.0, -0.0, 1.0, 1e-5, 1e-4, 1e15, 1e16,
                                                                            0.1, 2.5e-300, 5e-324, 123456789.125])),
       spelling=st.sampled_from(["repr", "%.17g", "%e", "+repr", " repr", "repr0", "hex"]))
def test_cpp_kernels_accept_exactly_the_keys_python_writes(value, spelling):
    """An option key is accepted only in Python's own spelling of its numbers, by the C++ kernel as by
    the Python and the fake kernels (a key one accepts and another refuses would run eagerly and fail
    under torch.compile)."""
    x, cam, alpha, seed, rate, _ = _case(0, 2, torch.float32, "contiguous", "eligible", "batch", "square")
    text = {"repr": repr(value), "%.17g": "%.17g" % value, "%e": "%e" % value, "+repr": "+" + repr(value),
            " repr": " " + repr(value), "repr0": repr(value) + "0", "hex": float(value).hex()}[spelling]
    key = f"2|3|-|f0.5|square|batch|eligible|{text}"
    python = _accepts(OPS._python_camdrop, (x, cam, alpha, seed, rate, key))
    assert _accepts(OPS.camdrop, (x, cam, alpha, seed, rate, key)) == python
    try:
        # (Options.decode: the key round-trips; gamma_scale -0.0 is written "0.0")
        canonical = repr(float(text)) == text and float(text) >= 0 and math.copysign(1.0, float(text)) > 0
    except ValueError:
        canonical = False
    assert python == canonical, text


@needs_cpp
@pytest.mark.parametrize("key", ["2|03|-|-|square|batch|eligible|1.0", "2|+3|-|-|square|batch|eligible|1.0",
                                 "2| 3|-|-|square|batch|eligible|1.0", "2|3|i07|-|square|batch|eligible|1.0",
                                 "2|3|-|f0.50|square|batch|eligible|1.0", "2|3|-|-|square|batch|eligible|0x1p0",
                                 f"2|{2**62 + 1}|-|-|square|batch|eligible|1.0", "02|3|-|-|square|batch|eligible|1.0"])
def test_cpp_kernels_refuse_other_spellings_of_a_key(key):
    x, cam, alpha, seed, rate, _ = _case(0, 2, torch.float32, "contiguous", "eligible", "batch", "square")
    for op in (OPS.camdrop, OPS._python_camdrop):
        assert not _accepts(op, (x, cam, alpha, seed, rate, key)), op
    assert _accepts(OPS.camdrop, (x, cam, alpha, seed, rate, f"2|{2**62}|-|-|square|batch|eligible|1.0"))


@pytest.mark.slow
def test_the_python_kernels_serve_where_cpp_does_not():
    """With _C switched off (CAMDROP_CPP_OPS=0, as where it does not load), the autograd, op and
    field-safety suites pass on the Python kernels and torch.library's autograd."""
    env = dict(os.environ, CAMDROP_CPP_OPS="0")
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-m", "not slow",
                          "tests/test_autograd.py", "tests/test_ops.py", "tests/test_field_safety.py",
                          "tests/test_contract.py"],
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
                         capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
