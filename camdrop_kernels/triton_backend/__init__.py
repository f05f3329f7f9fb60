"""The "triton" backend: three fused kernels per forward, one per backward.

1. ``select_kernel``: top pixels and top channels per sample, by bisection on keys.
2. ``mask_kernel``: Philox seeds at eligible positions only, dilation, a bit mask over the
   top channels, and dropped counts per sample.
3. ``apply_kernel``: the scale from the counts, then ``where(dropped, 0, x * scale)`` in
   one read of x and one write of y (also the backward, on dy).

Everything stays on the device: no host synchronisation, so CUDA graphs and
torch.compile work. Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import torch
import triton

from ..backends import triton_interpreting
from ..config import CamDropConfig, compute_dtype
from .apply import apply_kernel
from .layout import channels_spec, mask_spec, words_per_plane
from .mask import mask_kernel
from .select import key_constants, select_kernel

__all__ = ["forward", "backward", "dense_mask", "channels_spec", "mask_spec"]

# Bit-pattern views and exponent masks of the float dtypes cam and alpha may have.
_FLOAT_BITS = {
    torch.float16: (torch.int16, 16, 0x7C00),
    torch.bfloat16: (torch.int16, 16, 0x7F80),
    torch.float32: (torch.int32, 32, 0x7F800000),
    torch.float64: (torch.int64, 64, 0x7FF0000000000000),
}
_MAX_ROW_BLOCK = 4096
_NORMALIZE = {"batch": 0, "sample": 1, "none": 2}


def _row_args(t: torch.Tensor, prefix: str, length: int) -> tuple:
    """(bit view of a contiguous float tensor, its key constexprs) for the selection kernel."""
    view_dtype, nbits, exp_mask = _FLOAT_BITS[t.dtype]
    block = min(triton.next_power_of_2(length), _MAX_ROW_BLOCK)
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


def plan_select(cam, alpha, cfg: CamDropConfig):
    """Stage 1 launch and its outputs (pix, pix_count, gamma, chan, slot)."""
    N, C, H, W = cfg.N, cfg.C, cfg.H, cfg.W
    dev = cam.device
    n_pix, n_chan = cfg.top_pixels, cfg.top_channels
    cam_bits, cam_kw = _row_args(cam.reshape(N, H * W), "CAM", H * W)
    alpha_bits, alpha_kw = _row_args(alpha, "A", C)
    pix = torch.empty((N, n_pix), dtype=torch.int32, device=dev)
    pix_count = torch.empty((N,), dtype=torch.int32, device=dev)
    gamma = torch.empty((N,), dtype=torch.float32, device=dev)
    chan = torch.empty((N, n_chan), dtype=torch.int32, device=dev)
    slot = torch.empty((N, C), dtype=torch.int32, device=dev)
    eligible = cfg.gamma_mode == "eligible"
    launch = Launch(
        select_kernel, (N, 2),
        (cam_bits, alpha_bits, pix, pix_count, gamma, chan, slot,
         H * W, W, C, n_pix, n_chan, cfg.row_lo, cfg.row_hi, cfg.col_lo, cfg.col_hi,
         _float64_bits(cfg.eligible_numerator()), cfg.area * n_chan, 0.0 if eligible else cfg.dropblock_rate()),
        dict(ELIGIBLE=eligible, **cam_kw, **alpha_kw),
    )
    return launch, (pix, pix_count, gamma, chan, slot)


def plan_mask(seed, pix, pix_count, gamma, chan, cfg: CamDropConfig):
    """Stage 2 launch and its outputs (bit mask, dropped counts), both zero-initialised."""
    N, C, H, W = cfg.N, cfg.C, cfg.H, cfg.W
    n_pix, n_chan = cfg.top_pixels, cfg.top_channels
    wpp = words_per_plane(H, W)
    bits = torch.zeros((N, n_chan, wpp), dtype=torch.int32, device=pix.device)
    dropped = torch.zeros((N,), dtype=torch.int64, device=pix.device)
    rows = 2 * cfg.rho + 1 if cfg.block_shape == "diamond" else cfg.rh
    width = 2 * cfg.rho + 1 if cfg.block_shape == "diamond" else cfg.rw
    words = triton.next_power_of_2((width + 30) // 32 + 1)  # a run of `width` bits spans this many words
    launch = Launch(
        mask_kernel, (N * n_chan,),
        (seed, pix, pix_count, gamma, chan, bits, dropped, C, H, W, n_pix, n_chan, wpp),
        dict(UP=cfg.rh // 2, LEFT=cfg.rw // 2, RH=cfg.rh, RW=cfg.rw, RHO=cfg.rho,
             DIAMOND=cfg.block_shape == "diamond", ROWS=triton.next_power_of_2(rows), WORDS=words,
             SEEDS=min(triton.next_power_of_2(n_pix), 64), COUNT_BLOCK=min(triton.next_power_of_2(wpp), 1024)),
    )
    return launch, (bits, dropped)


def _flat_hw(t: torch.Tensor) -> bool:
    return t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3)


def plan_apply(x, y, slot, bits, dropped, scale, normalize: str, compute_scale: bool) -> Launch:
    """Stage 3 launch (forward when compute_scale, else backward with the saved scale)."""
    N, C, H, W = x.shape
    HW = H * W
    if x.stride(1) == 1 and C > 1:  # channels_last-like: c is the contiguous axis
        block_c, block_hw = min(triton.next_power_of_2(C), 64), 32
    else:
        block_hw = min(triton.next_power_of_2(HW), 1024)
        block_c = max(1, min(triton.next_power_of_2(C), 2048 // block_hw))
    return Launch(
        apply_kernel, (triton.cdiv(HW, block_hw), triton.cdiv(C, block_c), N),
        (x, y, slot, bits, dropped if dropped is not None else scale, scale,
         N, C, HW, W, bits.shape[1], bits.shape[2], *x.stride(), *y.stride()),
        dict(NORMALIZE=_NORMALIZE[normalize], COMPUTE_SCALE=compute_scale,
             COMPUTE_F64=scale.dtype == torch.float64, FLAT_HW=_flat_hw(x) and _flat_hw(y),
             ROUND_BF16=y.dtype == torch.bfloat16 and triton_interpreting(),
             BLOCK_C=block_c, BLOCK_HW=block_hw, BLOCK_N=min(triton.next_power_of_2(N), 1024)),
    )


def build_mask(cam: torch.Tensor, alpha: torch.Tensor, seed: torch.Tensor, cfg: CamDropConfig):
    """Run stages 1 and 2: (slot map (N, C), bit mask (N, n', words), dropped counts (N,))."""
    select, (pix, pix_count, gamma, chan, slot) = plan_select(cam, alpha, cfg)
    select()
    mask, (bits, dropped) = plan_mask(seed, pix, pix_count, gamma, chan, cfg)
    mask()
    return slot, bits, dropped


def forward(x, cam, alpha, seed, cfg: CamDropConfig, inplace: bool = False):
    """(y, slot map, bit mask, scale, dropped count per sample) for validated inputs."""
    slot, bits, dropped = build_mask(cam, alpha, seed, cfg)
    scale = torch.empty((cfg.N,), dtype=compute_dtype(x.dtype), device=x.device)
    y = x if inplace else torch.empty_like(x)
    plan_apply(x, y, slot, bits, dropped, scale, cfg.normalize, True)()
    return y, slot, bits, scale, dropped


def backward(dy, slot, bits, scale):
    """dx = 0 where dropped, else dy * scale."""
    dx = torch.empty_like(dy)
    plan_apply(dy, dx, slot, bits, None, scale, "batch", False)()
    return dx


def dense_mask(slot, bits, cfg: CamDropConfig):
    """Bool (N, C, H, W) from the slot map and the bit mask (torch ops, for inspection)."""
    N, C, H, W = cfg.N, cfg.C, cfg.H, cfg.W
    shifts = torch.arange(32, device=bits.device, dtype=torch.int32)
    planes = ((bits[..., None] >> shifts) & 1).reshape(N, bits.shape[1], -1)[..., : H * W] != 0
    planes = planes.reshape(N, bits.shape[1], H, W)
    picked = planes.gather(1, slot.clamp(min=0).long()[:, :, None, None].expand(N, C, H, W))
    return picked & (slot >= 0)[:, :, None, None]
