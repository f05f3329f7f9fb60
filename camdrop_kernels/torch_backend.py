"""The "torch" backend: SPEC-exact CamDrop in plain torch, doing only the work CamDrop needs.

Random numbers are drawn only at eligible positions (top channels x top pixels), blocks
are stamped only around the seeds that fire, and the big tensor is touched by one
multiply plus a scattered write of zeros. State kept for backward: the top channels
(N, n') and a bool mask over those channels only (N, n', H, W), and the scale (N,).

On CPU this is the fast path, and when the optional native extension is built
(``csrc/camdrop_cpu.c``) the mask build and the zeroing run there, in one pass each,
instead of as ~150 small torch ops. On CUDA it is an exact fallback for machines without
Triton; it calls ``nonzero`` and therefore synchronises with the host.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Tuple

import torch

from .config import CamDropConfig, compute_dtype
from .philox import philox_uniform

try:
    from . import _native
except ImportError:  # built without a C compiler: plain torch throughout
    _native = None
_use_native = _native is not None


def native_available() -> bool:
    """True when the native CPU extension is built and enabled."""
    return _use_native


@contextlib.contextmanager
def native_disabled() -> Iterator[None]:
    """Run the plain-torch implementation even where the native one is built (for tests)."""
    global _use_native
    saved, _use_native = _use_native, False
    try:
        yield
    finally:
        _use_native = saved


def _native_on(t: torch.Tensor) -> bool:
    return _use_native and t.device.type == "cpu"


def top_n(values: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (N, n), ascending, of the n top entries of each row of ``values`` by SPEC.md's ranking.

    The n-th largest value t comes from ``topk``; every entry above t is in, and of the
    entries equal to t the lowest-indexed ones fill the remaining places. NaN is
    mapped to -inf first; -0.0 == +0.0 under ``==`` and ``>``.
    """
    key = values if values.dtype == torch.float64 else values.to(torch.float32)
    key = torch.where(torch.isnan(key), float("-inf"), key)
    kth = torch.topk(key, n, dim=1, sorted=False).values.amin(1, keepdim=True)
    above = key > kth
    tied = key == kth
    need = n - above.sum(1, keepdim=True)
    take = above | (tied & (tied.cumsum(1) <= need))
    # Exactly n entries per row are True; a stable sort lists them in index order.
    return torch.sort(take.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :n].contiguous()


def block_offsets_flat(cfg: CamDropConfig, device: torch.device) -> torch.Tensor:
    """Flat (h*W + w) offsets of one block relative to its seed; valid seeds never cross an edge."""
    return torch.tensor([du * cfg.W + dv for du, dv in cfg.block_offsets()], dtype=torch.int64, device=device)


def build_mask(
    cam: torch.Tensor, alpha: torch.Tensor, seed: torch.Tensor, cfg: CamDropConfig
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(channels (N, n') int64, dropped (N, n', H, W) bool, dropped count per sample (N,) int64):
    the mask over the top channels only."""
    if _native_on(cam):
        return _native_mask_and_scale(cam, alpha, seed, cfg, torch.float64)[:3]
    N, C, H, W = cfg.N, cfg.C, cfg.H, cfg.W
    n_chan = cfg.top_channels
    device = cam.device
    chan = top_n(alpha, n_chan)
    pix = top_n(cam.reshape(N, H * W), cfg.top_pixels)
    u, v = pix // W, pix % W
    valid = (u >= cfg.row_lo) & (u < cfg.row_hi) & (v >= cfg.col_lo) & (v < cfg.col_hi)
    gamma = cfg.seed_rate(valid.sum(1))
    # Logical NCHW index of (i, chan[i, j], pix[i, k]): ((i*C + c)*H + u)*W + v.
    rows = torch.arange(N, device=device)[:, None] * C + chan
    offsets = rows[:, :, None] * (H * W) + pix[:, None, :]
    seeds = (philox_uniform(seed, offsets) < gamma[:, None, None]) & valid[:, None, :]
    i, j, k = seeds.nonzero(as_tuple=True)
    centres = (i * n_chan + j) * (H * W) + pix[i, k]
    covered = (centres[:, None] + block_offsets_flat(cfg, device)).reshape(-1)
    dropped = torch.zeros(N * n_chan * H * W, dtype=torch.bool, device=device)
    dropped[covered] = True
    return chan, dropped.reshape(N, n_chan, H, W), dropped.reshape(N, -1).sum(1)


_NORMALIZE = {"batch": 0, "sample": 1, "none": 2}


def _native_mask_and_scale(cam, alpha, seed, cfg: CamDropConfig, dtype: torch.dtype):
    """Steps 1-7 in csrc/camdrop_cpu.c: (channels, dropped, counts, scale in ``dtype``). float64
    copies of cam and alpha rank exactly like the originals (exact, monotonic, NaN stays NaN)."""
    N, C, H, W = cfg.N, cfg.C, cfg.H, cfg.W
    cam64 = cam.reshape(N, H * W).to(torch.float64).contiguous()
    alpha64 = alpha.to(torch.float64).contiguous()
    chan = torch.empty((N, cfg.top_channels), dtype=torch.int64)
    dropped = torch.zeros((N, cfg.top_channels, H, W), dtype=torch.bool)
    counts = torch.empty((N,), dtype=torch.int64)
    scale = torch.empty((N,), dtype=torch.float64)
    eligible = cfg.gamma_mode == "eligible"
    _native.build_mask(
        cam64.data_ptr(), alpha64.data_ptr(), N, C, H, W, cfg.top_pixels, cfg.top_channels,
        cfg.row_lo, cfg.row_hi, cfg.col_lo, cfg.col_hi, int(cfg.block_shape == "diamond"), cfg.rh, cfg.rw, cfg.rho,
        int(eligible), 0.0 if eligible else cfg.dropblock_rate(), cfg.eligible_numerator(),
        cfg.area * cfg.top_channels, _NORMALIZE[cfg.normalize], int(seed),
        chan.data_ptr(), dropped.data_ptr(), counts.data_ptr(), scale.data_ptr(),
    )
    return chan, dropped, counts, scale.to(dtype)


def apply(
    x: torch.Tensor, chan: torch.Tensor, dropped: torch.Tensor, scale: torch.Tensor, inplace: bool = False
) -> torch.Tensor:
    """``where(dropped, 0, x * scale)`` with one rounding to x's dtype; zeros only where dropped."""
    N = x.shape[0]
    s = scale.reshape(N, 1, 1, 1)
    # y is laid out like x (torch.empty_like), which is what the op's fake tensor promises.
    y = x if inplace else torch.empty_like(x)
    if x.dtype == scale.dtype:
        torch.mul(x, s, out=y)
    else:
        y.copy_(x.to(scale.dtype) * s)
    if _native_on(y):
        _native.zero_dropped(y.data_ptr(), y.element_size(), *y.stride(), chan.data_ptr(), dropped.data_ptr(),
                             N, chan.shape[1], y.shape[2], y.shape[3])
    else:
        i, j, h, w = dropped.nonzero(as_tuple=True)
        y[i, chan[i, j], h, w] = 0
    return y


def forward(
    x: torch.Tensor, cam: torch.Tensor, alpha: torch.Tensor, seed: torch.Tensor, cfg: CamDropConfig,
    inplace: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, channels, dropped mask, scale, dropped count per sample) for validated inputs."""
    if _native_on(x):
        chan, dropped, counts, scale = _native_mask_and_scale(cam, alpha, seed, cfg, compute_dtype(x.dtype))
    else:
        chan, dropped, counts = build_mask(cam, alpha, seed, cfg)
        scale = cfg.scale_from_dropped(counts, compute_dtype(x.dtype))
    return apply(x, chan, dropped, scale, inplace), chan, dropped, scale, counts


def backward(dy: torch.Tensor, chan: torch.Tensor, dropped: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """dx = 0 where dropped, else dy * scale: the forward's rule applied to dy."""
    return apply(dy, chan, dropped, scale)


def dense_mask(chan: torch.Tensor, dropped: torch.Tensor, cfg: CamDropConfig) -> torch.Tensor:
    """Bool (N, C, H, W) from the compact mask over the top channels."""
    N, _, H, W = dropped.shape
    full = torch.zeros(N, cfg.C, H, W, dtype=torch.bool, device=dropped.device)
    full[torch.arange(N, device=dropped.device)[:, None], chan] = dropped
    return full


def channels_spec(cfg: CamDropConfig):
    """Shape and dtype of the channel state this backend saves (for fake tensors)."""
    return (cfg.N, cfg.top_channels), torch.int64


def mask_spec(cfg: CamDropConfig):
    """Shape and dtype of the compact mask this backend saves (for fake tensors)."""
    return (cfg.N, cfg.top_channels, cfg.H, cfg.W), torch.bool
