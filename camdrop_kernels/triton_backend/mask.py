"""Stage 2: seeds at eligible positions, dilation into blocks, and the compact bit mask.

One program per plane (sample i, top-channel slot j). It draws U only at the eligible
pixels of sample i (the valid top pixels from stage 1), a chunk at a time, and skips
chunks where no seed fires. A firing seed drops, in each row of its block, one run of
columns; with the mask stored flat (bit h*W + w of the plane in word (h*W + w) >> 5)
that run is one contiguous range of bits, spanning at most WORDS words, which are
OR-ed in with atomics (runs of different seeds overlap). Once every run is in, the
program reads its plane back, counts the dropped bits and adds them to the sample's
counter.
"""
import triton
import triton.language as tl

from .philox import load_seed, uniform


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
    seed_ptr, pix_ptr, pix_count_ptr, gamma_ptr, chan_ptr, bits_ptr, dropped_ptr,
    C, H, W, n_pix, n_chan, words_per_plane,
    UP: tl.constexpr, LEFT: tl.constexpr, RH: tl.constexpr, RW: tl.constexpr, RHO: tl.constexpr,
    DIAMOND: tl.constexpr, ROWS: tl.constexpr, WORDS: tl.constexpr, SEEDS: tl.constexpr,
    COUNT_BLOCK: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)  # = i * n_chan + j
    i = plane // n_chan
    c = tl.load(chan_ptr + plane).to(tl.int64)
    k0, k1 = load_seed(seed_ptr)
    gamma = tl.load(gamma_ptr + i)
    count = tl.load(pix_count_ptr + i)
    plane_bits = bits_ptr + plane * words_per_plane
    plane_offset = (i * C + c) * H * W  # logical NCHW index of (i, c, 0, 0)
    r = tl.arange(0, ROWS)  # row of the block, top to bottom
    word = tl.arange(0, WORDS)
    if DIAMOND:
        # Row u - RHO + r of an L1 ball spans columns v - half .. v + half, half = RHO - |r - RHO|.
        half = RHO - tl.abs(r - RHO)
        row_ok = r < 2 * RHO + 1
        dcol = -half
        width = 2 * half + 1
        drow = r - RHO
    else:
        # A square seed covers rows u - UP .. u - UP + RH - 1, columns v - LEFT .. v - LEFT + RW - 1.
        row_ok = r < RH
        dcol = r * 0 - LEFT
        width = r * 0 + RW
        drow = r - UP
    for s0 in range(0, count, SEEDS):
        k = s0 + tl.arange(0, SEEDS)
        p = tl.load(pix_ptr + i * n_pix + k, mask=k < count, other=0)
        fire = (k < count) & (uniform(k0, k1, plane_offset + p) < gamma)
        if tl.max(fire.to(tl.int32), axis=0) > 0:
            # Flat bit range [start, start + width) of each (seed, block row) run; valid seeds'
            # blocks lie inside the map, so the run never leaves its row.
            start = p.to(tl.int64)[:, None] + drow[None, :] * W + dcol[None, :]  # [SEEDS, ROWS]
            live = fire[:, None] & row_ok[None, :]
            w = (start >> 5)[:, :, None] + word[None, None, :]  # [SEEDS, ROWS, WORDS]
            lo = tl.maximum(start[:, :, None] - 32 * w, 0)
            hi = tl.minimum(start[:, :, None] + width[None, :, None] - 32 * w, 32)
            ones = ((tl.full((), 1, tl.int64) << (hi - lo)) - 1) << lo
            tl.atomic_or(plane_bits + w, ones.to(tl.int32), mask=live[:, :, None] & (hi > lo))
    # Every run of this plane is in (a block-wide barrier orders the atomics before the reads).
    tl.debug_barrier()
    dropped = tl.full((), 0, tl.int64)
    for w0 in range(0, words_per_plane, COUNT_BLOCK):
        ww = w0 + tl.arange(0, COUNT_BLOCK)
        words = tl.load(plane_bits + ww, mask=ww < words_per_plane, other=0, volatile=True)
        dropped += tl.sum(_popcount32(words), axis=0)
    tl.atomic_add(dropped_ptr + i, dropped)
