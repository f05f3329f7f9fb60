"""The dense, literal CamDrop: SPEC.md step by step, written to be read next to the paper.

Everything here is full-size and obvious on purpose: the random stream is drawn over
the whole tensor, pixels and channels are ranked by a stable sort, squares are
dilated by max pooling and diamonds by OR-ing shifted copies. Slow, and the yardstick
every fast backend is tested against.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from . import validation
from .config import CamDropConfig, compute_dtype
from .philox import make_seed, philox_uniform

Top = Optional[Union[int, float]]


def rank_top(values: torch.Tensor, n: int) -> torch.Tensor:
    """Bool (N, L): the n largest entries of each row of ``values`` (N, L) by SPEC.md's ranking.

    NaN ranks as -inf, -0.0 equals +0.0 (adding +0.0 turns -0.0 into +0.0), and a
    stable descending sort puts equal values in index order, lower index first.
    """
    key = values.to(torch.float64)
    key = torch.where(torch.isnan(key), float("-inf"), key) + 0.0
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    top = torch.zeros(values.shape, dtype=torch.bool, device=values.device)
    return top.scatter_(1, order[:, :n], True)


def dilate(seeds: torch.Tensor, cfg: CamDropConfig) -> torch.Tensor:
    """Bool (N, C, H, W): every element inside the block of some seed (SPEC.md step 6)."""
    s = seeds.to(torch.float32)
    if cfg.block_shape == "square":
        # Output h takes the max over input rows h - (rh-1)//2 .. h + rh//2: a seed at u reaches
        # rows u - rh//2 .. u + (rh-1)//2, as the authors' SAME max pooling does.
        padded = F.pad(s, ((cfg.rw - 1) // 2, cfg.rw // 2, (cfg.rh - 1) // 2, cfg.rh // 2))
        N, C, H, W = s.shape
        pooled = F.max_pool2d(padded.reshape(N * C, 1, *padded.shape[2:]), (cfg.rh, cfg.rw), stride=1)
        return pooled.reshape(N, C, H, W) > 0
    r = cfg.rho
    H, W = s.shape[2:]
    padded = F.pad(s, (r, r, r, r))
    out = torch.zeros_like(s, dtype=torch.bool)
    for du, dv in cfg.block_offsets():
        # dropped[h, w] |= seeds[h - du, w - dv]
        out |= padded[:, :, r - du: r - du + H, r - dv: r - dv + W] > 0
    return out


def camdrop_parts(
    x: torch.Tensor,
    cam: torch.Tensor,
    alpha: torch.Tensor,
    seed: torch.Tensor,
    cfg: CamDropConfig,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, dropped, scale) for validated inputs: cam (N, H, W), an int64 seed tensor, a config."""
    N, C, H, W = x.shape
    # Steps 1-2: the top pixels S_i and the top channels K_i.
    top_pix = rank_top(cam.reshape(N, H * W), cfg.top_pixels).reshape(N, H, W)
    top_chan = rank_top(alpha, cfg.top_channels)
    # Step 3: valid seed centres V, and S_i ∩ V.
    valid = torch.zeros(H, W, dtype=torch.bool, device=x.device)
    valid[cfg.row_lo:cfg.row_hi, cfg.col_lo:cfg.col_hi] = True
    eligible_pix = top_pix & valid
    # Step 4: per-sample seed rate.
    gamma = cfg.seed_rate(eligible_pix.reshape(N, -1).sum(1))
    # Step 5: U over every element, at its logical NCHW index.
    offsets = torch.arange(N * C * H * W, dtype=torch.int64, device=x.device).reshape(N, C, H, W)
    u = philox_uniform(seed, offsets)
    seeds = top_chan[:, :, None, None] & eligible_pix[:, None] & (u < gamma[:, None, None, None])
    # Step 6: dilation.
    dropped = dilate(seeds, cfg)
    # Step 7: normalisation.
    cdt = compute_dtype(x.dtype)
    scale = cfg.scale_from_dropped(dropped.reshape(N, -1).sum(1), cdt)
    # Step 8: output, one rounding of the product.
    y = torch.where(dropped, 0.0, x.to(cdt) * scale[:, None, None, None]).to(x.dtype)
    return y, dropped, scale


def _prepare(x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize,
             gamma_mode, gamma_scale, seed, generator):
    cam, cfg, seed, generator = validation.prepare_call(
        x, cam, alpha, drop_prob=drop_prob, block_size=block_size, top_pixels=top_pixels,
        top_channels=top_channels, block_shape=block_shape, normalize=normalize, gamma_mode=gamma_mode,
        gamma_scale=gamma_scale, seed=seed, generator=generator,
    )
    return cam, make_seed(seed, generator, x.device), cfg


def camdrop(
    x: torch.Tensor,
    cam: torch.Tensor,
    alpha: torch.Tensor,
    drop_prob: float = 0.1,
    block_size: int = 7,
    *,
    top_pixels: Top = None,
    top_channels: Top = None,
    block_shape: str = "square",
    normalize: str = "batch",
    gamma_mode: str = "dropblock",
    gamma_scale: float = 1.0,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    training: bool = True,
    inplace: bool = False,
) -> torch.Tensor:
    """Reference CamDrop: same arguments and result as :func:`camdrop_kernels.camdrop`."""
    cam, seed_t, cfg = _prepare(x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape,
                                normalize, gamma_mode, gamma_scale, seed, generator)
    validation.check_bool("training", training)
    validation.check_bool("inplace", inplace)
    if not training or cfg.drop_prob == 0.0 or x.numel() == 0:
        return x
    y = camdrop_parts(x, cam, alpha, seed_t, cfg)[0]
    if inplace:
        validation.check_inplace(x)
        return x.copy_(y)
    return y


def camdrop_mask(
    x: torch.Tensor,
    cam: torch.Tensor,
    alpha: torch.Tensor,
    drop_prob: float = 0.1,
    block_size: int = 7,
    *,
    top_pixels: Top = None,
    top_channels: Top = None,
    block_shape: str = "square",
    normalize: str = "batch",
    gamma_mode: str = "dropblock",
    gamma_scale: float = 1.0,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Reference mask: bool (N, C, H, W), True where dropped."""
    cam, seed_t, cfg = _prepare(x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape,
                                normalize, gamma_mode, gamma_scale, seed, generator)
    if cfg.drop_prob == 0.0 or x.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    return camdrop_parts(x, cam, alpha, seed_t, cfg)[1]
