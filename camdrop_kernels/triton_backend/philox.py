"""SPEC.md's random stream U(seed, o) in Triton, written out so every Triton version draws the same.

(``tl.rand`` with an int64 offset is the same stream on Triton 3.8, but older releases
fed 64-bit offsets to a Philox4x64 instead; this copy pins the contract.)
"""
import triton
import triton.language as tl

ROUND_A = tl.constexpr(0xD2511F53)
ROUND_B = tl.constexpr(0xCD9E8D57)
KEY_A = tl.constexpr(0x9E3779B9)
KEY_B = tl.constexpr(0xBB67AE85)


@triton.jit
def seed_key(seed_ptr, seed_value, SEED_FROM_PTR: tl.constexpr):
    """The int64 seed (in device memory, or passed by value) as the Philox key words (low, high)."""
    if SEED_FROM_PTR:
        s = tl.load(seed_ptr)
    else:
        s = tl.full((), 0, tl.int64) + seed_value
    k0 = (s & 0xFFFFFFFF).to(tl.uint32)
    k1 = ((s >> 32) & 0xFFFFFFFF).to(tl.uint32)
    return k0, k1


@triton.jit
def uniform(k0, k1, offset):
    """U(seed, offset) as float32 for an int64 ``offset`` block: Philox4x32-10, counter (lo, hi, 0, 0)."""
    c0 = (offset & 0xFFFFFFFF).to(tl.uint32)
    c1 = ((offset >> 32) & 0xFFFFFFFF).to(tl.uint32)
    c2 = c0 * 0
    c3 = c0 * 0
    for _ in tl.static_range(10):
        _c0, _c2 = c0, c2
        c0 = tl.umulhi(ROUND_B, _c2) ^ c1 ^ k0
        c2 = tl.umulhi(ROUND_A, _c0) ^ c3 ^ k1
        c1 = tl.mul(ROUND_B, _c2, sanitize_overflow=False)
        c3 = tl.mul(ROUND_A, _c0, sanitize_overflow=False)
        k0 = tl.add(k0, KEY_A, sanitize_overflow=False)
        k1 = tl.add(k1, KEY_B, sanitize_overflow=False)
    x = c0.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, -x - 1, x)
    return x.to(tl.float32) * 4.6566127342e-10
