"""The random stream U(seed, o) against SPEC.md's check values and an independent integer model."""
import random

import pytest
import torch

from camdrop_kernels.philox import philox_uniform

CHECK_VALUES = [
    (0, 0, 0.7980929017066956),
    (0, 1, 0.055517591536045074),
    (1, 0, 0.21948163211345673),
    (12345, 678, 0.9846185445785522),
    (1099511627779, 8589934597, 0.9385080337524414),
]


def python_philox_c0(seed: int, offset: int) -> int:
    """SPEC.md's Philox4x32-10 with Python's unbounded ints: the final c0 as an unsigned word."""
    m = 0xFFFFFFFF
    k0, k1 = seed & m, seed >> 32
    c0, c1, c2, c3 = offset & m, offset >> 32, 0, 0
    for _ in range(10):
        p0, p2 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p2 >> 32) ^ c1 ^ k0, p2 & m, (p0 >> 32) ^ c3 ^ k1, p0 & m
        k0, k1 = (k0 + 0x9E3779B9) & m, (k1 + 0xBB67AE85) & m
    return c0


def python_uniform(seed: int, offset: int) -> float:
    c0 = python_philox_c0(seed, offset)
    x = c0 - 2**32 if c0 >= 2**31 else c0
    if x < 0:
        x = -x - 1
    # float32(x) * float32(4.6566127342e-10), computed with float32 tensors of one element.
    return (torch.tensor(x, dtype=torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)).item()


@pytest.mark.parametrize("seed,offset,expected", CHECK_VALUES)
def test_check_values(seed, offset, expected):
    assert philox_uniform(torch.tensor(seed), torch.tensor([offset])).item() == expected


def test_matches_integer_model_on_random_seeds_and_offsets():
    rng = random.Random(2019)
    seeds = [rng.randrange(2**63) for _ in range(4)] + [2**63 - 1, 2**32 - 1, 2**32]
    offsets = [rng.randrange(2**40) for _ in range(40)] + [0, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**62]
    for seed in seeds:
        got = philox_uniform(torch.tensor(seed), torch.tensor(offsets))
        want = torch.tensor([python_uniform(seed, o) for o in offsets], dtype=torch.float32)
        assert torch.equal(got, want), seed


def test_uniform_is_in_unit_interval():
    u = philox_uniform(torch.tensor(7), torch.arange(1 << 16))
    assert u.dtype == torch.float32
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01


def test_native_stream_matches(monkeypatch):
    """The native CPU extension's copy of the stream (csrc/philox.h), through its test hooks."""
    from native_hooks import load_hooks

    native = load_hooks()
    for seed, offset, expected in CHECK_VALUES:
        assert native.uniform(seed, offset) == expected
    rng = random.Random(2024)
    for _ in range(200):
        seed, offset = rng.randrange(2**63), rng.randrange(2**44)
        assert native.uniform(seed, offset) == python_uniform(seed, offset)


def test_native_extension_is_built_in_ci():
    """CI installs with a C compiler: the fast CPU path must not silently fall back there."""
    import os

    from camdrop_kernels import backends

    if os.environ.get("CI") != "true":
        pytest.skip("only checked in CI")
    assert backends.native_available()


def test_native_stream_where_c0_is_int32_min():
    """seed 0, offset 2047882832 ends with c0 = 0x80000000 (found by search): x = INT32_MIN, whose
    -x - 1 overflowed int32 in the C code (undefined behaviour; GCC happened to fold it to ~x). The
    word is now mapped on its unsigned bits; U is float32(2**31 - 1) * 2**-31, rounded."""
    from native_hooks import load_hooks

    assert python_philox_c0(0, 2047882832) == 0x80000000
    want = python_uniform(0, 2047882832)
    assert load_hooks().uniform(0, 2047882832) == want == 0.9999999403953552
    assert philox_uniform(torch.tensor(0), torch.tensor([2047882832])).item() == want
