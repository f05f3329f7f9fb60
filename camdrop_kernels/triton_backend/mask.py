"""Stage 2: seeds at eligible positions, dilation into blocks, and the compact bit mask.

One program per (sample i, top-channel slot j, block of rows). It draws U only at the
eligible pixels of sample i (the valid top pixels from stage 1), in chunks, and skips
chunks where no seed fires. Each firing seed covers, in every row of its block, one
run of columns; the run is cut into 32-bit words, so a row block's dropped set is a
[rows, words] array of bit words, OR-reduced over the seeds of the chunk.

The mask is stored flat: bit (h*W + w) of plane (i, j) lives in word (h*W + w) >> 5 of
that plane, so the apply kernel needs no division. A row's word starts at flat bit
h*W + 32*k, generally mid-word: it is shifted into a 64-bit value and OR-ed atomically
into the two words it straddles (neighbouring rows share words). The plane's dropped
count (a popcount of the row words) is added to the sample's counter.
"""
import triton
import triton.language as tl

from .philox import load_seed, uniform


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _popcount32(x):
    """Set bits of each int64 entry holding a 32-bit word (SWAR)."""
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return ((x * 0x01010101) >> 24) & 0xFF


@triton.jit
def mask_kernel(
    seed_ptr, pix_ptr, pix_count_ptr, gamma_ptr, chan_ptr, bits_ptr, dropped_ptr,
    C, H, W, n_pix, n_chan, words_per_plane,
    UP: tl.constexpr, DOWN: tl.constexpr, LEFT: tl.constexpr, RW: tl.constexpr, RHO: tl.constexpr,
    DIAMOND: tl.constexpr, BLOCK_H: tl.constexpr, WORDS: tl.constexpr, SEEDS: tl.constexpr,
):
    plane = tl.program_id(0).to(tl.int64)  # = i * n_chan + j
    i = plane // n_chan
    c = tl.load(chan_ptr + plane).to(tl.int64)
    k0, k1 = load_seed(seed_ptr)
    gamma = tl.load(gamma_ptr + i)
    count = tl.load(pix_count_ptr + i)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)  # rows of this block
    word = tl.arange(0, WORDS)
    plane_offset = (i * C + c) * H * W  # logical NCHW index of (i, c, 0, 0)
    rows = tl.zeros((BLOCK_H, WORDS), dtype=tl.int64)
    for s0 in range(0, count, SEEDS):
        k = s0 + tl.arange(0, SEEDS)
        p = tl.load(pix_ptr + i * n_pix + k, mask=k < count, other=0)
        fire = (k < count) & (uniform(k0, k1, plane_offset + p) < gamma)
        if tl.max(fire.to(tl.int32), axis=0) > 0:
            u = p // W
            v = p - u * W
            dh = h[:, None] - u[None, :]  # [BLOCK_H, SEEDS]
            if DIAMOND:
                # Row u + d of an L1 ball of radius RHO spans columns v - (RHO - |d|) .. v + (RHO - |d|).
                half = RHO - tl.abs(dh)
                hit = fire[None, :] & (half >= 0)
                first = v[None, :] - half
                width = 2 * half + 1
            else:
                # A square seed covers rows u - UP .. u + DOWN, columns v - LEFT .. v - LEFT + RW - 1.
                hit = fire[None, :] & (dh >= -UP) & (dh <= DOWN)
                first = v[None, :] - LEFT + dh * 0
                width = RW + dh * 0
            # The run [first, first + width) inside word k: bits [a, b) of that word.
            rel = first[:, None, :] - 32 * word[None, :, None]  # [BLOCK_H, WORDS, SEEDS]
            a = tl.maximum(rel, 0)
            b = tl.minimum(rel + width[:, None, :], 32)
            run = ((b - a).to(tl.int64) > 0) & hit[:, None, :]
            ones = ((tl.full((), 1, tl.int64) << (b - a).to(tl.int64)) - 1) << a.to(tl.int64)
            rows |= tl.reduce(tl.where(run, ones, 0), 2, _bit_or)
    inside = (h < H)[:, None] & (rows != 0)
    tl.atomic_add(dropped_ptr + i, tl.sum(tl.sum(tl.where(inside, _popcount32(rows), 0), axis=1), axis=0))
    flat = h[:, None].to(tl.int64) * W + 32 * word[None, :]  # flat bit index of each row word's bit 0
    shifted = rows << (flat & 31)  # < 2**63: rows < 2**32 and the shift < 32
    lo = (shifted & 0xFFFFFFFF).to(tl.int32)
    hi = (shifted >> 32).to(tl.int32)
    target = bits_ptr + plane * words_per_plane + (flat >> 5)
    tl.atomic_or(target, lo, mask=inside & (lo != 0))
    tl.atomic_or(target + 1, hi, mask=inside & (hi != 0))
