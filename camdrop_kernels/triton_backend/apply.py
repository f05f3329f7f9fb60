"""Step 8: y = where(dropped, +0.0, x * scale), one read of x and one write of y (the backward is
the same kernel on dy).

Three kernels, picked by the launch plan from x's and y's strides:

- ``apply_nchw_kernel``: each sample dense with its channels outer (contiguous NCHW, any
  sample stride). A program owns a flat chunk of one sample (no empty tails but the sample's
  last chunk); it reads its sample's scale once and the slots of the planes the chunk touches;
  when none of them is a top channel (7/8 of the planes by default) the chunk is a plain
  vectorised multiply, behind one scalar branch, and only chunks touching a top plane read
  mask bits. Offsets are int32 within the sample, from an int64 sample base.
- ``apply_nhwc_kernel``: each sample dense with its channels inner (channels_last). A program
  owns a [BP pixels, BC channels] tile; BP divides 32, so each channel's bits for the tile are
  one word, loaded once per channel, and each element costs one AND and one select.
- ``apply_strided_kernel``: any other strides (views, mixed layouts), 2-D tiles with int64
  index arithmetic.

With BATCH (a forward with normalize="batch"), the batch scale is not read from ``scale`` but
computed from the N per-sample dropped counts the state kernel just wrote (``common.batch_scale``:
the same float64 formula, so the same bits), and the first program stores it to ``scale`` for the
backward: the state kernel needs no completion counter.

A slot outside [0, n') reads no mask memory (hostile state cannot make the kernels read out of
bounds). Triton's interpreter truncates float32 -> bfloat16, so there the kernels round by
hand (ROUND_BF16); GPUs convert with round-to-nearest-even natively.
"""
import triton
import triton.language as tl

from .common import batch_scale, store_batch_scale, udiv


@triton.jit
def _float32_to_bfloat16(y):
    """float32 -> bfloat16, round to nearest even, in integer ops (the interpreter's path)."""
    u = y.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = tl.where(y != y, (u >> 16) | 0x40, r)  # NaN stays a (quiet) NaN
    return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _store(y_ptr, offs, y, mask, ROUND_BF16: tl.constexpr, MASKED: tl.constexpr):
    if ROUND_BF16:
        y = _float32_to_bfloat16(y)
    if MASKED:
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty))


@triton.jit
def _scale(scale_ptr, dropped_ptr, i, first, N, C, P, BATCH: tl.constexpr):
    """The sample's scale: read from ``scale``, or with BATCH the batch's, from the counts (and the
    first program stores it for the backward)."""
    if BATCH:
        s = batch_scale(dropped_ptr, N, C, P, 1024).to(scale_ptr.dtype.element_ty)
        if first:
            store_batch_scale(scale_ptr, s, N, 1024)
    else:
        s = tl.load(scale_ptr + i)
    return s


# Sizes are not specialised (one compiled kernel serves many shapes); sample strides are (their
# divisibility lets the loads vectorise), and so are x's and y's pointers (keyed by the launch
# plans), but not the state's, which the plans do not key on.
_STATE_PTRS = ["slots_ptr", "bits_ptr", "scale_ptr", "dropped_ptr"]
PER_CALL = ("x_ptr", "y_ptr", "slots_ptr", "bits_ptr", "scale_ptr", "dropped_ptr")


@triton.jit(do_not_specialize=["N", "C", "P", "CP", "n_chan", "words", "m_p", "s_p"],
            do_not_specialize_on_alignment=_STATE_PTRS)
def apply_nchw_kernel(
    x_ptr, y_ptr, slots_ptr, bits_ptr, scale_ptr, dropped_ptr,
    N, C, P, CP, n_chan, words, sxn, syn, m_p, s_p,
    BLOCK: tl.constexpr, VEC: tl.constexpr, EVEN: tl.constexpr, SPAN: tl.constexpr, ROWS: tl.constexpr,
    BIG_N: tl.constexpr, GRID_Y: tl.constexpr, ROUND_BF16: tl.constexpr, BATCH: tl.constexpr,
):
    chunk = tl.program_id(0)
    if BIG_N:  # more samples than grid axis 1 holds: axis 2 counts blocks of GRID_Y samples
        i = tl.program_id(1) + tl.program_id(2) * GRID_Y
        if i >= N:
            return
    else:
        i = tl.program_id(1)
    i64 = i.to(tl.int64)
    # The chunk as rows of VEC consecutive elements (one 16-byte vector each): element (r, v) is
    # c * P + q = f0 + r * VEC + v within the sample, an int32.
    f0 = chunk * BLOCK
    row0 = f0 + tl.arange(0, BLOCK // VEC) * VEC
    offs = row0[:, None] + tl.arange(0, VEC)[None, :]
    in_bounds = offs < CP
    scale = _scale(scale_ptr, dropped_ptr, i, (chunk == 0) & (i == 0), N, C, P, BATCH)
    if EVEN:
        xv = tl.load(x_ptr + i64 * sxn + offs)
    else:
        xv = tl.load(x_ptr + i64 * sxn + offs, mask=in_bounds, other=0.0)
    y = xv.to(scale.dtype) * scale
    srow = slots_ptr + i64 * C
    planes = bits_ptr + i64 * n_chan * words  # the sample's bit planes
    c0 = udiv(f0, m_p, s_p)  # the chunk's first plane
    if SPAN == 2:
        # BLOCK <= P: the chunk touches plane c0 and maybe c0 + 1 (from element `edge` on).
        c1 = tl.minimum(c0 + 1, C - 1)
        s0 = tl.load(srow + c0)
        s1 = tl.load(srow + c1)
        top0 = (s0 >= 0) & (s0 < n_chan)
        top1 = (s1 >= 0) & (s1 < n_chan) & (c1 > c0)
        if top0 | top1:
            edge = (c0 + 1) * P  # int32: at most C * P
            if ROWS:
                # P % VEC == 0: a row never straddles two planes, and its VEC pixels q .. q + VEC - 1
                # (q % VEC == 0, VEC divides 32) are bits q & 31 .. of one word: one load per row.
                second = row0 >= edge
                q = row0 - tl.where(second, edge, edge - P)
                top = tl.where(second, top1, top0) & (row0 < CP)
                w = tl.where(second, s1, s0) * words + (q >> 5)
                word = tl.load(planes + w, mask=top, other=0) >> (q & 31)
                bit = 1 << tl.arange(0, VEC)
                y = tl.where(top[:, None] & ((word[:, None] & bit[None, :]) != 0), 0.0, y)
            else:
                second = offs >= edge
                q = offs - tl.where(second, edge, edge - P)  # pixel within its plane
                top = tl.where(second, top1, top0) & in_bounds
                w = tl.where(second, s1, s0) * words + (q >> 5)
                word = tl.load(planes + w, mask=top, other=0)
                y = tl.where(top & (((word >> (q & 31)) & 1) != 0), 0.0, y)
    else:
        # BLOCK > P: the chunk spans up to SPAN planes; per element, its plane and slot.
        cc = c0 + tl.arange(0, SPAN)
        ss = tl.load(srow + cc, mask=cc < C, other=-1)
        if tl.max(((ss >= 0) & (ss < n_chan)).to(tl.int32), axis=0) > 0:
            c = udiv(offs, m_p, s_p)
            q = offs - c * P
            slot = tl.load(srow + c, mask=in_bounds, other=-1)
            top = (slot >= 0) & (slot < n_chan)
            word = tl.load(planes + slot * words + (q >> 5), mask=top, other=0)
            y = tl.where(top & (((word >> (q & 31)) & 1) != 0), 0.0, y)
    _store(y_ptr + i64 * syn, offs, y, in_bounds, ROUND_BF16, not EVEN)


@triton.jit(do_not_specialize=["N", "P", "n_chan", "words"], do_not_specialize_on_alignment=_STATE_PTRS)
def apply_nhwc_kernel(
    x_ptr, y_ptr, slots_ptr, bits_ptr, scale_ptr, dropped_ptr,
    N, C, P, n_chan, words, sxn, syn,
    BP: tl.constexpr, BC: tl.constexpr, EVEN_P: tl.constexpr, EVEN_C: tl.constexpr, ONE_WORD: tl.constexpr,
    BIG_N: tl.constexpr, GRID_Y: tl.constexpr, ROUND_BF16: tl.constexpr, BATCH: tl.constexpr,
):
    tile_p = tl.program_id(0)
    if BIG_N:  # axis 2 counts (blocks of GRID_Y samples) x (channel tiles)
        tiles_c = (C + BC - 1) // BC
        i = tl.program_id(1) + (tl.program_id(2) // tiles_c) * GRID_Y
        tile_c = tl.program_id(2) % tiles_c
        if i >= N:
            return
    else:
        i = tl.program_id(1)
        tile_c = tl.program_id(2)
    i64 = i.to(tl.int64)
    p = tile_p * BP + tl.arange(0, BP)
    c = tile_c * BC + tl.arange(0, BC)
    p_ok = p < P
    c_ok = c < C
    offs = p[:, None] * C + c[None, :]  # int32 within the sample
    scale = _scale(scale_ptr, dropped_ptr, i, (tile_p == 0) & (tile_c == 0) & (i == 0), N, C, P, BATCH)
    if EVEN_P and EVEN_C:
        xv = tl.load(x_ptr + i64 * sxn + offs)
    else:
        xv = tl.load(x_ptr + i64 * sxn + offs, mask=p_ok[:, None] & c_ok[None, :], other=0.0)
    y = xv.to(scale.dtype) * scale
    # Slots and words as [1, BC] rows (2-D from the start: no layout conversion to broadcast them).
    c2 = c[None, :]
    if EVEN_C:
        slot = tl.load(slots_ptr + i64 * C + c2)
    else:
        slot = tl.load(slots_ptr + i64 * C + c2, mask=c2 < C, other=-1)
    top = (slot >= 0) & (slot < n_chan)
    wbase = bits_ptr + (i64 * n_chan + slot) * words
    if ONE_WORD:
        # BP divides 32 and tiles start at multiples of BP: the tile's pixels share word p0 >> 5.
        word = tl.load(wbase + ((tile_p * BP) >> 5), mask=top, other=0)
        drop = (word & (1 << (p & 31))[:, None]) != 0
    else:
        word = tl.load(wbase + (p >> 5)[:, None], mask=top & p_ok[:, None], other=0)
        drop = ((word >> (p & 31)[:, None]) & 1) != 0
    y = tl.where(drop, 0.0, y)
    _store(y_ptr + i64 * syn, offs, y, p_ok[:, None] & c_ok[None, :], ROUND_BF16, not (EVEN_P and EVEN_C))


@triton.jit(do_not_specialize=["N"], do_not_specialize_on_alignment=_STATE_PTRS)
def apply_strided_kernel(
    x_ptr, y_ptr, slots_ptr, bits_ptr, scale_ptr, dropped_ptr,
    N, C, P, H, W, n_chan, words, tiles_c, tiles_p,
    sxn, sxc, sxd, sxh, sxw, syn, syc, syd, syh, syw,
    FLAT: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    BATCH: tl.constexpr,
):
    pid = tl.program_id(0)
    tile_p = pid % tiles_p
    rest = pid // tiles_p
    tile_c = rest % tiles_c
    i = (rest // tiles_c).to(tl.int64)
    scale = _scale(scale_ptr, dropped_ptr, i, pid == 0, N, C, P, BATCH)
    c = tile_c * BLOCK_C + tl.arange(0, BLOCK_C)
    q = tile_p * BLOCK_P + tl.arange(0, BLOCK_P)
    c_ok = c < C
    q_ok = q < P
    m = c_ok[:, None] & q_ok[None, :]
    c64 = c.to(tl.int64)[:, None]
    q64 = q.to(tl.int64)[None, :]
    if FLAT:  # the pixel index steps by the w stride in both tensors
        x_off = i * sxn + c64 * sxc + q64 * sxw
        y_off = i * syn + c64 * syc + q64 * syw
    else:
        w = q64 % W
        h = (q64 // W) % H
        d = q64 // (W * H)
        x_off = i * sxn + c64 * sxc + d * sxd + h * sxh + w * sxw
        y_off = i * syn + c64 * syc + d * syd + h * syh + w * syw
    xv = tl.load(x_ptr + x_off, mask=m, other=0.0)
    slot = tl.load(slots_ptr + i * C + c, mask=c_ok, other=-1)
    top = ((slot >= 0) & (slot < n_chan))[:, None] & m
    word_ptr = bits_ptr + (i * n_chan + slot.to(tl.int64)[:, None]) * words + (q64 >> 5)
    word = tl.load(word_ptr, mask=top, other=0)
    dropped = top & (((word >> (q[None, :] & 31)) & 1) != 0)
    y = tl.where(dropped, 0.0, xv.to(scale.dtype) * scale)
    _store(y_ptr, y_off, y, m, ROUND_BF16, True)
