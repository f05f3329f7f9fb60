"""The "triton" backend: the state from two kernels, the apply in one; everything on the device.

1. ``select_kernel``: top pixels and top channels per sample, by bisection on keys, and the
   seed rate per sample.
2. ``mask_kernel``: Philox seeds at eligible positions only, blocks as runs of bits in a bit
   mask over the top channels, and dropped counts per sample.
3. ``apply_kernel``: ``where(dropped, 0, x * scale)`` in one read of x and one write of y
   (also the backward, on dy).

No host synchronisation: CUDA graphs and torch.compile work. Under ``TRITON_INTERPRET=1``
the same kernels run on CPU tensors. Maps of every rank are handled as 3-D (D, H, W).
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import torch
import triton

from ..backends import triton_interpreting
from ..options import Geometry, Options
from ..torch_ops import scale_from_dropped
from .apply import apply_kernel
from .mask import mask_kernel
from .select import key_constants, select_kernel

__all__ = ["build_state", "apply"]

# Bit-pattern views and exponent masks of the float dtypes cam and alpha may have.
_FLOAT_BITS = {
    torch.float16: (torch.int16, 16, 0x7C00),
    torch.bfloat16: (torch.int16, 16, 0x7F80),
    torch.float32: (torch.int32, 32, 0x7F800000),
    torch.float64: (torch.int64, 64, 0x7FF0000000000000),
}
_MAX_ROW_BLOCK = 4096


def _row_args(t: torch.Tensor, prefix: str, length: int) -> tuple:
    """(bit view of a contiguous float tensor, its key constexprs) for the selection kernel."""
    view_dtype, nbits, exp_mask = _FLOAT_BITS[t.dtype]
    block = min(triton.next_power_of_2(max(length, 1)), _MAX_ROW_BLOCK)
    consts = key_constants(nbits, exp_mask)
    kw = {f"{prefix}_KEY_BITS": consts["KEY_BITS"], f"{prefix}_MAG": consts["MAG"],
          f"{prefix}_EXP": consts["EXP_MASK"], f"{prefix}_NEG_INF": consts["NEG_INF_KEY"],
          f"{prefix}_SIGN": consts["SIGN"], f"{prefix}_BLOCK": block, f"{prefix}_SINGLE": length <= block}
    return t.contiguous().view(view_dtype), kw


def _float64_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


class Launch(NamedTuple):
    """One kernel launch: what the launcher runs, and what the compile check compiles ahead of time."""

    kernel: object
    grid: tuple
    args: tuple
    constexprs: dict
    num_warps: int = 4

    def __call__(self):
        self.kernel[self.grid](*self.args, **self.constexprs, num_warps=self.num_warps)


def _scalar_or_pointer(t: torch.Tensor, device: torch.device):
    """(tensor to pass as a pointer, value to pass by value, read from the pointer?) for a
    one-element tensor that is on the device (read there) or on the CPU (read here: no sync)."""
    if t.device == device:
        return t, 0, True
    return t, t.item(), False


def plan_select(cam, alpha, drop_prob, geo: Geometry, N: int, device):
    """Stage 1 launch and its outputs (pix, pix_count, gamma, chan, slot)."""
    opts = geo.options
    C, P = geo.C, geo.P
    _, H, W = geo.dims
    n_pix, n_chan = geo.top_pixels, geo.top_channels
    cam_bits, cam_kw = _row_args(cam.reshape(N, P), "CAM", P)
    alpha_bits, alpha_kw = _row_args(alpha, "A", C)
    pix = torch.empty((N, n_pix), dtype=torch.int32, device=device)
    pix_count = torch.empty((N,), dtype=torch.int32, device=device)
    gamma = torch.empty((N,), dtype=torch.float32, device=device)
    chan = torch.empty((N, n_chan), dtype=torch.int32, device=device)
    slot = torch.empty((N, C), dtype=torch.int32, device=device)
    eligible = opts.gamma_mode == "eligible"
    p_tensor, p_value, p_from_ptr = _scalar_or_pointer(drop_prob, device)
    launch = Launch(
        select_kernel, (N, 2),
        (cam_bits, alpha_bits, pix, pix_count, gamma, chan, slot, P, H, W, C, n_pix, n_chan,
         geo.lo[0], geo.hi[0], geo.lo[1], geo.hi[1], geo.lo[2], geo.hi[2],
         p_tensor, _float64_bits(float(p_value)), _float64_bits(opts.gamma_scale),
         C * P if eligible else P, geo.area * n_chan if eligible else geo.area * geo.num_valid),
        dict(ELIGIBLE=eligible, P_FROM_PTR=p_from_ptr, **cam_kw, **alpha_kw),
    )
    return launch, (pix, pix_count, gamma, chan, slot)


def plan_mask(seed, pix, pix_count, gamma, chan, bits, dropped, geo: Geometry, N: int, device):
    """Stage 2 launch (bits and dropped must be zero-initialised)."""
    opts = geo.options
    _, H, W = geo.dims
    n_chan = geo.top_channels
    seed_tensor, seed_value, seed_from_ptr = _scalar_or_pointer(seed, device)
    ext_d = geo.up[0] + geo.down[0] + 1
    ext_h = geo.up[1] + geo.down[1] + 1
    width = geo.up[2] + geo.down[2] + 1
    words = triton.next_power_of_2((width + 30) // 32 + 1)  # a run of `width` bits spans this many words
    return Launch(
        mask_kernel, (N * n_chan,),
        (seed_tensor, seed_value, pix, pix_count, gamma, chan, bits, dropped, geo.C, geo.P, H, W,
         geo.top_pixels, n_chan, geo.words),
        dict(EXT_H=ext_h, UP_D=geo.up[0], UP_H=geo.up[1], UP_W=geo.up[2], RW=width, RHO=geo.rho,
             DIAMOND=opts.block_shape == "diamond", RUNS=triton.next_power_of_2(ext_d * ext_h),
             NUM_RUNS=ext_d * ext_h, WORDS=words, SEEDS=min(triton.next_power_of_2(geo.top_pixels), 64),
             COUNT_BLOCK=min(triton.next_power_of_2(max(geo.words, 1)), 1024), SEED_FROM_PTR=seed_from_ptr),
    )


def build_state(x, cam, alpha, seed, drop_prob, opts: Options, out) -> None:
    """Steps 1-7 into ``out`` = (slots, bits, scale, dropped, rate)."""
    N = x.shape[0]
    geo = opts.geometry(x.shape[1], x.shape[2:])
    slots, bits, scale, dropped, rate = out
    select, (pix, pix_count, gamma, chan, slot) = plan_select(cam, alpha, drop_prob, geo, N, x.device)
    select()
    bits.zero_()
    counts = torch.zeros((N,), dtype=torch.int64, device=x.device)
    plan_mask(seed, pix, pix_count, gamma, chan, bits, counts, geo, N, x.device)()
    slots.copy_(slot)
    dropped.copy_(counts)
    rate.copy_(gamma)
    scale.copy_(scale_from_dropped(geo, N, counts, scale.dtype))


def _strides5(t: torch.Tensor):
    """Strides of (n, c, d, h, w), 0 for the axes a 1-D or 2-D map lacks."""
    s = t.stride()
    return (s[0], s[1]) + (0,) * (5 - t.dim()) + tuple(s[2:])


def _flat(t: torch.Tensor, D: int, H: int, W: int) -> bool:
    """Does pixel q sit at q * (w stride)? (Then the kernel skips the index arithmetic.)"""
    _, _, sd, sh, sw = _strides5(t)
    return (H == 1 or sh == W * sw) and (D == 1 or sd == H * W * sw)


def plan_apply(x, y, slots, bits, scale) -> Launch:
    N, C = x.shape[0], x.shape[1]
    spatial = tuple(x.shape[2:])
    D, H, W = (1,) * (3 - len(spatial)) + spatial
    P = D * H * W
    if x.stride(1) == 1 and C > 1:  # channels_last-like: c is the contiguous axis
        block_c, block_p = min(triton.next_power_of_2(C), 64), 32
    else:
        block_p = min(triton.next_power_of_2(P), 1024)
        block_c = max(1, min(triton.next_power_of_2(C), 2048 // block_p))
    tiles_c, tiles_p = triton.cdiv(C, block_c), triton.cdiv(P, block_p)
    return Launch(
        apply_kernel, (N * tiles_c * tiles_p,),
        (x, y, slots, bits, scale, C, P, H, W, bits.shape[1], bits.shape[2], tiles_c, tiles_p,
         *_strides5(x), *_strides5(y)),
        dict(FLAT=_flat(x, D, H, W) and _flat(y, D, H, W),
             ROUND_BF16=y.dtype == torch.bfloat16 and triton_interpreting(), BLOCK_C=block_c, BLOCK_P=block_p),
    )


def apply(x, y, slots, bits, scale) -> None:
    """Step 8: y = +0.0 where dropped, else x * scale (y may be x)."""
    plan_apply(x, y, slots, bits, scale)()
