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
def seed_key(seed_ptr, seed_lo, seed_hi, from_ptr):
    """The int64 seed as the Philox key words (low, high): passed by value as its two 32-bit halves
    (int32 arguments, so that every seed has one signature), or read from device memory when
    ``from_ptr`` is nonzero."""
    k0 = (tl.full((), 0, tl.int32) + seed_lo).to(tl.uint32, bitcast=True)
    k1 = (tl.full((), 0, tl.int32) + seed_hi).to(tl.uint32, bitcast=True)
    if from_ptr != 0:
        s = tl.load(seed_ptr)
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
        # Each 32 x 32 -> 64-bit product in one multiply (mul.wide: both halves at once).
        pb = c2.to(tl.uint64) * ROUND_B
        pa = c0.to(tl.uint64) * ROUND_A
        c0 = (pb >> 32).to(tl.uint32) ^ c1 ^ k0
        c2 = (pa >> 32).to(tl.uint32) ^ c3 ^ k1
        c1 = pb.to(tl.uint32)
        c3 = pa.to(tl.uint32)
        k0 = tl.add(k0, KEY_A, sanitize_overflow=False)
        k1 = tl.add(k1, KEY_B, sanitize_overflow=False)
    x = c0.to(tl.int32, bitcast=True)
    x = tl.where(x < 0, -x - 1, x)
    return x.to(tl.float32) * 4.6566127342e-10
