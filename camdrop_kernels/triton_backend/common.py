"""Jit helpers shared by the state, finish and apply kernels (one definition each)."""
import triton
import triton.language as tl


@triton.jit
def i64(x):
    """x as an int64 scalar (an int argument may arrive as int32, or as the constexpr 1)."""
    return tl.full((), 0, tl.int64) + x


@triton.jit
def udiv(x, m, s):
    """x // d for int32 0 <= x < 2**31, with the host's magic (m, s) of d (``launch.magic(d)``)."""
    return ((x.to(tl.int64) * m) >> s).to(tl.int32)


@triton.jit
def popcount32(x):
    """Set bits of each int32 entry (SWAR)."""
    x = x.to(tl.uint32, bitcast=True)
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24).to(tl.int32)


@triton.jit
def batch_scale(dropped_ptr, N, C, P, FB: tl.constexpr):
    """SPEC.md step 7, normalize="batch": numel / kept over the whole batch from the N per-sample
    dropped counts, a float64 quotient (0 when nothing is kept), as a float64 scalar. Exact: the
    counts are integers summed in int64, the quotient rounded once (the caller rounds it once more,
    to the compute dtype, as the contract says)."""
    total = tl.full((), 0, tl.int64)
    for n0 in range(0, N, FB):  # loop: batch_counts
        ii = n0 + tl.arange(0, FB)
        total += tl.sum(tl.load(dropped_ptr + ii, mask=ii < N, other=0), axis=0)
    numel = i64(C) * P * N
    kept = numel - total
    return tl.where(kept == 0, 0.0, numel.to(tl.float64) / tl.maximum(kept, 1).to(tl.float64))


@triton.jit
def store_batch_scale(scale_ptr, s, N, FB: tl.constexpr):
    """scale[0 .. N) = s (already in scale's dtype)."""
    for n0 in range(0, N, FB):  # loop: batch_store
        ii = n0 + tl.arange(0, FB)
        tl.store(scale_ptr + ii, tl.zeros([FB], scale_ptr.dtype.element_ty) + s, mask=ii < N)


@triton.jit(do_not_specialize=["N", "C", "P"])
def finish_kernel(dropped_ptr, scale_ptr, N, C, P, FB: tl.constexpr):
    """One program: the batch scale from the per-sample counts into every entry of ``scale``
    (``build_state`` alone with normalize="batch"; a forward's apply kernel does this itself)."""
    store_batch_scale(scale_ptr, batch_scale(dropped_ptr, N, C, P, FB).to(scale_ptr.dtype.element_ty), N, FB)
