"""Step 8: y = where(dropped, +0.0, x * scale), one read of x and one write of y.

A program covers a [BLOCK_C, BLOCK_P] tile of one sample (a 1-D grid: any batch size);
Triton coalesces along whichever axis is contiguous (pixels for NCHW, channels for
channels_last). Each channel's slot (-1 when not a top channel) picks its plane of the bit
mask; the bit of pixel q is bit (q & 31) of word q >> 5. A slot outside [0, n') reads no
mask memory (hostile state cannot make the kernel read out of bounds). The backward is this
kernel on dy.
"""
import triton
import triton.language as tl


@triton.jit
def apply_kernel(
    x_ptr, y_ptr, slot_ptr, bits_ptr, scale_ptr,
    C, P, H, W, n_chan, words, tiles_c, tiles_p,
    sxn, sxc, sxd, sxh, sxw, syn, syc, syd, syh, syw,
    FLAT: tl.constexpr, ROUND_BF16: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
):
    pid = tl.program_id(0)
    tile_p = pid % tiles_p
    rest = pid // tiles_p
    tile_c = rest % tiles_c
    i = (rest // tiles_c).to(tl.int64)
    scale = tl.load(scale_ptr + i)
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
    slot = tl.load(slot_ptr + i * C + c, mask=c_ok, other=-1)
    top = ((slot >= 0) & (slot < n_chan))[:, None] & m
    word_ptr = bits_ptr + (i * n_chan + slot.to(tl.int64)[:, None]) * words + (q64 >> 5)
    word = tl.load(word_ptr, mask=top, other=0)
    dropped = top & (((word >> (q[None, :] & 31)) & 1) != 0)
    y = tl.where(dropped, 0.0, xv.to(scale.dtype) * scale)
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
