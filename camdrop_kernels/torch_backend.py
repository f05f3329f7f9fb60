"""The "torch" backend: SPEC-exact CamDrop in plain torch, doing only the work CamDrop needs.

Random numbers are drawn only at eligible positions (top channels x top pixels), blocks
are stamped only around the seeds that fire, and the big tensor is touched by one
multiply plus a scattered write of zeros. State kept for backward: the top channels
(N, n') and a bool mask over those channels only (N, n', H, W), and the scale (N,).

On CPU this is the fast path. On CUDA it is an exact fallback for machines without
Triton; it calls ``nonzero`` and therefore synchronises with the host.
"""
from __future__ import annotations

from typing import Tuple

import torch

from .config import CamDropConfig, compute_dtype
from .philox import philox_uniform


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
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(channels (N, n') int64, dropped (N, n', H, W) bool): the mask over the top channels only."""
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
    return chan, dropped.reshape(N, n_chan, H, W)


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
    i, j, h, w = dropped.nonzero(as_tuple=True)
    y[i, chan[i, j], h, w] = 0
    return y


def forward(
    x: torch.Tensor, cam: torch.Tensor, alpha: torch.Tensor, seed: torch.Tensor, cfg: CamDropConfig,
    inplace: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, channels, dropped mask, scale, dropped count per sample) for validated inputs."""
    chan, dropped = build_mask(cam, alpha, seed, cfg)
    counts = dropped.reshape(cfg.N, -1).sum(1)
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
