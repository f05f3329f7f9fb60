"""Stage 3: y = where(dropped, 0, x * scale), one read of x and one write of y.

A program covers a [BLOCK_C, BLOCK_HW] tile of one sample; Triton coalesces along
whichever axis is contiguous (hw for NCHW, c for channels_last). Each channel's slot
(-1 when not a top channel) picks its plane of the bit mask; the bit of element hw is
bit (hw & 31) of word hw >> 5. The forward derives the per-sample scale from the
dropped counts in float64 and rounds it once (program (0, 0, i) stores it for the
backward); the backward is this kernel on dy with the saved scale.
"""
import triton
import triton.language as tl


@triton.jit
def apply_kernel(
    x_ptr, y_ptr, slot_ptr, bits_ptr, dropped_ptr, scale_ptr,
    N, C, HW, W, n_chan, words_per_plane,
    sxn, sxc, sxh, sxw, syn, syc, syh, syw,
    NORMALIZE: tl.constexpr,  # 0: batch, 1: sample, 2: none
    COMPUTE_SCALE: tl.constexpr, COMPUTE_F64: tl.constexpr, FLAT_HW: tl.constexpr, ROUND_BF16: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_hw = tl.program_id(0)
    pid_c = tl.program_id(1)
    i = tl.program_id(2).to(tl.int64)
    cdt = tl.float64 if COMPUTE_F64 else tl.float32
    if COMPUTE_SCALE:
        per_sample = tl.full((), 1, tl.int64) * C * HW  # (C or HW may arrive as a constexpr 1)
        if NORMALIZE == 0:
            dropped = tl.full((), 0, tl.int64)
            for n0 in range(0, N, BLOCK_N):
                nn = n0 + tl.arange(0, BLOCK_N)
                dropped += tl.sum(tl.load(dropped_ptr + nn, mask=nn < N, other=0), axis=0)
            numel = per_sample * N
        else:
            dropped = tl.load(dropped_ptr + i)
            numel = per_sample
        kept = numel - dropped
        # float64 quotient, rounded once to the compute dtype; kept = 0 gives 0.
        s64 = tl.where(kept == 0, 0.0, numel.to(tl.float64) / tl.maximum(kept, 1).to(tl.float64))
        if NORMALIZE == 2:
            s64 = tl.full((), 1.0, tl.float64)
        scale = s64.to(cdt)
        if (pid_hw == 0) & (pid_c == 0):
            tl.store(scale_ptr + i, scale)
    else:
        scale = tl.load(scale_ptr + i)

    c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    hw = pid_hw * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c_ok = c < C
    hw_ok = hw < HW
    m = c_ok[:, None] & hw_ok[None, :]
    c64 = c.to(tl.int64)[:, None]
    hw64 = hw.to(tl.int64)[None, :]
    if FLAT_HW:  # sh == W * sw for both tensors: hw steps by sw
        x_off = i * sxn + c64 * sxc + hw64 * sxw
        y_off = i * syn + c64 * syc + hw64 * syw
    else:
        hh = hw64 // W
        ww = hw64 - hh * W
        x_off = i * sxn + c64 * sxc + hh * sxh + ww * sxw
        y_off = i * syn + c64 * syc + hh * syh + ww * syw
    xv = tl.load(x_ptr + x_off, mask=m, other=0.0)
    slot = tl.load(slot_ptr + i * C + c, mask=c_ok, other=-1)
    top = (slot >= 0)[:, None] & m
    word_ptr = bits_ptr + (i * n_chan + slot.to(tl.int64)[:, None]) * words_per_plane + (hw64 >> 5)
    word = tl.load(word_ptr, mask=top, other=0)
    dropped_here = top & (((word >> (hw[None, :] & 31)) & 1) != 0)
    y = tl.where(dropped_here, 0.0, xv.to(cdt) * scale)
    if ROUND_BF16:
        y = _float32_to_bfloat16(y)
    tl.store(y_ptr + y_off, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _float32_to_bfloat16(y):
    """float32 -> bfloat16, round to nearest even, in integer ops.

    GPUs convert this way natively (cvt.rn.bf16.f32); Triton's interpreter truncates
    instead, so the interpreter path rounds by hand to keep the contract's one rounding.
    """
    u = y.to(tl.uint32, bitcast=True)
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = tl.where(y != y, (u >> 16) | 0x40, r)  # NaN stays a (quiet) NaN
    return r.to(tl.uint16).to(tl.bfloat16, bitcast=True)
