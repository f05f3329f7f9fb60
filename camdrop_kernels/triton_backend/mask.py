"""Stage 2: seeds at eligible positions, dilation into blocks, and the compact bit mask.

One program per plane (sample i, top-channel slot j). It draws U only at the eligible
pixels of sample i (the valid top pixels from stage 1), a chunk at a time, and skips
chunks where no seed fires. A firing seed drops, in each (d, h) row of its block, one run
along w; with the mask stored flat (bit p of the plane in word p >> 5, p the row-major
pixel index) that run is one contiguous range of bits, spanning at most WORDS words,
which are OR-ed in with relaxed atomics (runs of different seeds overlap). Once every run
is in, the program reads its plane back, counts the dropped bits and adds them to the
sample's counter. Maps of any rank are 3-D here: (1, 1, L) and (1, H, W).
"""
import triton
import triton.language as tl

from .philox import seed_key, uniform


@triton.jit
def _popcount32(x):
    """Set bits of each entry, read as a 32-bit word (SWAR on int64 lanes)."""
    x = x.to(tl.int64) & 0xFFFFFFFF
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24) & 0xFF


@triton.jit
def mask_kernel(
    seed_ptr, seed_value, pix_ptr, pix_count_ptr, gamma_ptr, chan_ptr, bits_ptr, dropped_ptr,
    C, P, H, W, n_pix, n_chan, words_per_plane,
    EXT_H: tl.constexpr, UP_D: tl.constexpr, UP_H: tl.constexpr, UP_W: tl.constexpr, RW: tl.constexpr,
    RHO: tl.constexpr, DIAMOND: tl.constexpr, RUNS: tl.constexpr, NUM_RUNS: tl.constexpr, WORDS: tl.constexpr,
    SEEDS: tl.constexpr, COUNT_BLOCK: tl.constexpr, SEED_FROM_PTR: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)  # = i * n_chan + j
    i = plane // n_chan
    c = tl.load(chan_ptr + plane).to(tl.int64)
    k0, k1 = seed_key(seed_ptr, seed_value, SEED_FROM_PTR)
    gamma = tl.load(gamma_ptr + i)
    count = tl.load(pix_count_ptr + i)
    plane_bits = bits_ptr + plane * words_per_plane
    plane_offset = (i * C + c) * P  # logical index o of (i, c, pixel 0), int64
    # The block as runs along w: run r is the (dd, dh) = (r // EXT_H - UP_D, r % EXT_H - UP_H) row
    # of the box (squares: UP_W before the centre, RW long) or of the L1 ball (diamonds: half-width
    # RHO - |dd| - |dh|, absent where that is negative).
    r = tl.arange(0, RUNS)
    dd = r // EXT_H - UP_D
    dh = r % EXT_H - UP_H
    if DIAMOND:
        half = RHO - tl.abs(dd) - tl.abs(dh)
        run_ok = (r < NUM_RUNS) & (half >= 0)
        left = half
        width = 2 * half + 1
    else:
        run_ok = r < NUM_RUNS
        left = r * 0 + UP_W
        width = r * 0 + RW
    delta = (dd * H + dh) * W - left
    word = tl.arange(0, WORDS)
    for s0 in range(0, count, SEEDS):
        k = s0 + tl.arange(0, SEEDS)
        p = tl.load(pix_ptr + i * n_pix + k, mask=k < count, other=0)
        fire = (k < count) & (uniform(k0, k1, plane_offset + p) < gamma)
        if tl.max(fire.to(tl.int32), axis=0) > 0:
            # Flat bit range [start, start + width) of each (seed, run); valid seeds' blocks lie
            # inside the map, so a run never leaves its row.
            start = p.to(tl.int64)[:, None] + delta[None, :]  # [SEEDS, RUNS]
            live = fire[:, None] & run_ok[None, :]
            w = (start >> 5)[:, :, None] + word[None, None, :]  # [SEEDS, RUNS, WORDS]
            lo = tl.maximum(start[:, :, None] - 32 * w, 0)
            hi = tl.minimum(start[:, :, None] + width[None, :, None] - 32 * w, 32)
            ones = ((tl.full((), 1, tl.int64) << (hi - lo)) - 1) << lo
            tl.atomic_or(plane_bits + w, ones.to(tl.int32), mask=live[:, :, None] & (hi > lo), sem="relaxed")
    # Every run of this plane is in (a block-wide barrier orders the atomics before the reads).
    tl.debug_barrier()
    dropped = tl.full((), 0, tl.int64)
    for w0 in range(0, words_per_plane, COUNT_BLOCK):
        ww = w0 + tl.arange(0, COUNT_BLOCK)
        words = tl.load(plane_bits + ww, mask=ww < words_per_plane, other=0, volatile=True)
        dropped += tl.sum(_popcount32(words), axis=0)
    tl.atomic_add(dropped_ptr + i, dropped, sem="relaxed")
