"""The dense, literal CamDrop: SPEC.md step by step, written to be read next to the paper.

Everything here is full-size and obvious on purpose, and computed here from SPEC.md (counts,
block geometry, rates, scales), not taken from ``options.py``: the random stream is drawn over
the whole tensor, pixels and channels are ranked by a stable sort, and blocks are grown by
OR-ing shifted copies of the seed map, one per offset of the block. Slow, and the yardstick
every fast backend is tested against. Any rank: x is (N, C, *S) with S of 1, 2 or 3 axes.
"""
from __future__ import annotations

import itertools
import math
import struct
from typing import List, Tuple

import torch
import torch.nn.functional as F

from . import validation
from .philox import make_seed, philox_uniform


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


def count(arg, total: int, default: int) -> int:
    """SPEC.md's ``top_pixels``/``top_channels``: an int is a count, a float f is floor(f * total)
    (one float64 product), None the default; at least 1, at most total."""
    if arg is None:
        n = default
    elif isinstance(arg, float):
        n = max(1, math.floor(arg * total))
    else:
        n = arg
    return max(1, min(n, total))


def block(S: Tuple[int, ...], block_size: int, block_shape: str):
    """SPEC.md step 3: (offsets a seed drops, per-axis [lo, hi) of valid centres)."""
    if block_shape == "square":
        r = [min(block_size, s) for s in S]
        offsets = list(itertools.product(*[range(-(rk // 2), (rk - 1) // 2 + 1) for rk in r]))
        bounds = [(rk // 2, s - (rk - 1) // 2) for rk, s in zip(r, S)]
    else:
        rho = min(block_size, *S) // 2
        if 2 * rho + 1 > min(S):
            rho = (min(S) - 1) // 2
        offsets = [d for d in itertools.product(range(-rho, rho + 1), repeat=len(S)) if sum(map(abs, d)) <= rho]
        bounds = [(rho, s - rho) for s in S]
    return offsets, bounds


def dilate(seeds: torch.Tensor, offsets: List[Tuple[int, ...]]) -> torch.Tensor:
    """Step 6: dropped[.., u + d] for every seed at u and every offset d of the block."""
    rank = len(offsets[0])
    pad = max(max(abs(v) for v in d) for d in offsets)
    padded = F.pad(seeds.to(torch.uint8), (pad, pad) * rank).bool()
    S = seeds.shape[2:]
    out = torch.zeros_like(seeds)
    for d in offsets:
        # out[h] |= seeds[h - d]: the slice of the padded map shifted by -d.
        window = tuple(slice(pad - dk, pad - dk + s) for dk, s in zip(d, S))
        out |= padded[(slice(None), slice(None)) + window]
    return out


def to_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def camdrop_parts(x, cam, alpha, seed, drop_prob: float, block_size: int, top_pixels, top_channels, block_shape: str,
                  normalize: str, gamma_mode: str, gamma_scale: float):
    """(y, dropped, scale) for validated inputs: cam (N, *S), an int64 seed tensor."""
    N, C = x.shape[:2]
    S = tuple(x.shape[2:])
    P = math.prod(S)
    offsets, bounds = block(S, block_size, block_shape)
    A = len(offsets)
    r = [min(block_size, s) for s in S]
    # Steps 1-2: the top pixels S_i and the top channels K_i.
    n_pix = count(top_pixels, P, max(1, P // math.prod(r)))
    n_chan = count(top_channels, C, max(1, C // 8))
    top_pix = rank_top(cam.reshape(N, P), n_pix).reshape((N,) + S)
    top_chan = rank_top(alpha, n_chan)
    # Step 3: valid seed centres V, and S_i ∩ V.
    valid = torch.zeros(S, dtype=torch.bool, device=x.device)
    valid[tuple(slice(lo, hi) for lo, hi in bounds)] = True
    eligible = top_pix & valid
    num_valid = int(valid.sum())
    # Step 4: the seed rate per sample, float64 left to right, clamped, rounded to float32.
    gammas = []
    for m in eligible.reshape(N, -1).sum(1).tolist():
        if gamma_mode == "dropblock":
            g = drop_prob * gamma_scale * P / (A * num_valid)
        else:
            g = drop_prob * gamma_scale * (C * P) / (A * n_chan * m) if m else 0.0
        gammas.append(to_float32(min(max(g, 0.0), 1.0)))
    gamma = torch.tensor(gammas, dtype=torch.float32, device=x.device)
    # Step 5: U over every element, at its logical index o = (i*C + c)*P + flat(u).
    o = torch.arange(N * C * P, dtype=torch.int64, device=x.device).reshape(x.shape)
    u = philox_uniform(seed, o)
    expand = (slice(None), slice(None)) + (None,) * len(S)
    seeds = top_chan[expand] & eligible[:, None] & (u < gamma.reshape((N,) + (1,) * (len(S) + 1)))
    # Step 6: dilation.
    dropped = dilate(seeds, offsets)
    # Step 7: normalisation, a float64 quotient per sample (Python floats), one rounding.
    per_sample_dropped = dropped.reshape(N, -1).sum(1).tolist()
    if normalize == "none":
        scales = [1.0] * N
    elif normalize == "batch":
        kept = N * C * P - sum(per_sample_dropped)
        scales = [N * C * P / kept if kept else 0.0] * N
    else:
        scales = [C * P / (C * P - d) if C * P - d else 0.0 for d in per_sample_dropped]
    cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
    scale = torch.tensor(scales, dtype=torch.float64, device=x.device).to(cdt)
    # Step 8: +0.0 where dropped, else one rounding of the product.
    y = torch.where(dropped, 0.0, x.to(cdt) * scale.reshape((N,) + (1,) * (len(S) + 1))).to(x.dtype)
    return y, dropped, scale


def _run(rank, x, cam, alpha, drop_prob, block_size, *, top_pixels=None, top_channels=None, block_shape="square",
         normalize="batch", gamma_mode="eligible", gamma_scale=1.0, seed=None, generator=None, want="y",
         training=True, inplace=False):
    """Validate (the same checks as the API), then steps 1-8."""
    validation.check_block_size(block_size)
    top_pixels = validation.check_top("top_pixels", top_pixels)
    top_channels = validation.check_top("top_channels", top_channels)
    validation.check_choice("block_shape", block_shape, ("square", "diamond"))
    validation.check_choice("normalize", normalize, ("batch", "sample", "none"))
    validation.check_choice("gamma_mode", gamma_mode, ("eligible", "dropblock"))
    gamma_scale = validation.check_gamma_scale(gamma_scale)
    p = validation.check_probability("drop_prob", drop_prob)
    cam = validation.check_inputs(rank, x, cam, alpha)
    seed = validation.check_seed(seed)
    generator = validation.check_generator(generator, x.device)
    validation.check_bool("training", training)
    validation.check_bool("inplace", inplace)
    if want == "mask" and (p == 0.0 or x.numel() == 0):
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    if want == "y" and (not training or p == 0.0 or x.numel() == 0):
        return x
    y, dropped, _ = camdrop_parts(x, cam, alpha, make_seed(seed, generator, x), p, block_size, top_pixels,
                                  top_channels, block_shape, normalize, gamma_mode, gamma_scale)
    if want == "mask":
        return dropped
    if inplace:
        validation.check_inplace(x)
        return x.copy_(y)
    return y


def camdrop(x, cam, alpha, drop_prob=0.1, block_size=7, **options) -> torch.Tensor:
    """Reference CamDrop on 2-D maps: same arguments and result as :func:`camdrop_kernels.camdrop`."""
    return _run(2, x, cam, alpha, drop_prob, block_size, **options)


def camdrop1d(x, cam, alpha, drop_prob=0.1, block_size=7, **options) -> torch.Tensor:
    """Reference CamDrop on 1-D maps (x (N, C, L))."""
    return _run(1, x, cam, alpha, drop_prob, block_size, **options)


def camdrop3d(x, cam, alpha, drop_prob=0.1, block_size=7, **options) -> torch.Tensor:
    """Reference CamDrop on 3-D maps (x (N, C, D, H, W))."""
    return _run(3, x, cam, alpha, drop_prob, block_size, **options)


def camdrop_mask(x, cam, alpha, drop_prob=0.1, block_size=7, **options) -> torch.Tensor:
    """Reference mask on 2-D maps: bool like x, True where dropped."""
    return _run(2, x, cam, alpha, drop_prob, block_size, want="mask", **options)


def camdrop1d_mask(x, cam, alpha, drop_prob=0.1, block_size=7, **options) -> torch.Tensor:
    return _run(1, x, cam, alpha, drop_prob, block_size, want="mask", **options)


def camdrop3d_mask(x, cam, alpha, drop_prob=0.1, block_size=7, **options) -> torch.Tensor:
    return _run(3, x, cam, alpha, drop_prob, block_size, want="mask", **options)
