"""The "plain" backend: SPEC.md in plain torch ops, doing only the work CamDrop needs.

It runs wherever torch does: on the CPU when the native extension is not built (a machine
without a C compiler), and on CUDA when triton is not installed. Random numbers are drawn only
at eligible positions (top channels x valid top pixels), blocks are stamped only around the
seeds that fire, and x is read once by a multiply before the dropped elements are zeroed.
It calls ``nonzero``, so on CUDA it synchronises with the host.
"""
from __future__ import annotations

import torch

from .. import state
from ..options import Geometry, Options
from ..philox import philox_uniform
from .base import Backend


def top_n(values: torch.Tensor, n: int) -> torch.Tensor:
    """Bool (N, L): the n top entries of each row of ``values`` by SPEC.md's ranking.

    The n-th largest value t comes from ``topk``; every entry above t is in, and of the
    entries equal to t the lowest-indexed ones fill the remaining places. NaN is mapped to
    -inf first; -0.0 == +0.0 under ``==`` and ``>``.
    """
    key = values if values.dtype == torch.float64 else values.to(torch.float32)
    key = torch.where(torch.isnan(key), float("-inf"), key)
    kth = torch.topk(key, n, dim=1, sorted=False).values.amin(1, keepdim=True)
    above = key > kth
    tied = key == kth
    need = n - above.sum(1, keepdim=True)
    return above | (tied & (tied.cumsum(1) <= need))


def seed_rate(geo: Geometry, drop_prob: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """gamma per sample (N,) as float32 from |S_i ∩ V| (int tensor): float64 left to right,
    clamped to [0, 1], rounded once. Tensor / tensor division: one correctly rounded quotient."""
    opts = geo.options
    p = drop_prob.to(device=eligible.device, dtype=torch.float64).reshape(())
    if opts.gamma_mode == "dropblock":
        num = p * opts.gamma_scale * float(geo.P)
        den = torch.full_like(num, float(geo.area) * float(geo.num_valid))
        g = (num / den).expand(eligible.shape) if geo.num_valid else torch.zeros(eligible.shape, dtype=torch.float64,
                                                                                   device=eligible.device)
    else:
        num = (p * opts.gamma_scale * float(geo.C * geo.P)).expand(eligible.shape)
        den = float(geo.area) * float(geo.top_channels) * eligible.to(torch.float64)
        g = torch.where(eligible == 0, 0.0, num / den.clamp(min=1.0))
    return torch.nan_to_num(g, nan=0.0).clamp(0.0, 1.0).to(torch.float32)


def scale_from_dropped(geo: Geometry, N: int, dropped: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Per-sample scale (N,) in ``dtype`` (SPEC.md step 7): float64 quotient, one rounding; kept 0 gives 0."""
    per_sample = geo.C * geo.P
    mode = geo.options.normalize
    if mode == "none":
        return torch.ones((N,), dtype=dtype, device=dropped.device)
    if mode == "batch":
        numel = N * per_sample
        kept = (numel - dropped.sum()).expand(dropped.shape)
    else:
        numel = per_sample
        kept = per_sample - dropped
    kept = kept.to(torch.float64)
    scale = torch.where(kept == 0, 0.0, torch.full_like(kept, float(numel)) / kept)
    return scale.to(dtype)


def _build_state(x, cam, alpha, seed, drop_prob, opts: Options, out) -> None:
    """Steps 1-7 into ``out`` = (slots, bits, scale, dropped, rate)."""
    N, C = x.shape[0], x.shape[1]
    geo = opts.geometry(C, x.shape[2:])
    P, (_, H, W) = geo.P, geo.dims
    device = x.device
    slots_out, bits_out, scale_out, dropped_out, rate_out = out
    n_chan = geo.top_channels
    # Step 2: top channels, numbered in ascending channel order.
    chan_mask = top_n(alpha, n_chan)
    slots = torch.where(chan_mask, chan_mask.to(torch.int32).cumsum(1) - 1, -1).to(torch.int32)
    chan = torch.sort(chan_mask.to(torch.uint8), dim=1, descending=True, stable=True).indices[:, :n_chan]
    # Steps 1 and 3: the top pixels and the valid centres among them.
    pix_mask = top_n(cam.reshape(N, P), geo.top_pixels)
    q = torch.arange(P, device=device)
    d, h, w = q // (H * W), (q // W) % H, q % W
    valid = ((d >= geo.lo[0]) & (d < geo.hi[0]) & (h >= geo.lo[1]) & (h < geo.hi[1])
             & (w >= geo.lo[2]) & (w < geo.hi[2]))
    eligible = pix_mask & valid  # (N, P)
    gamma = seed_rate(geo, drop_prob, eligible.sum(1))
    # Step 5: U at the logical index o = (i*C + c)*P + p of each (top channel, eligible pixel).
    i, k = eligible.nonzero(as_tuple=True)  # eligible pixels, sample by sample
    i2 = i[:, None].expand(-1, n_chan)
    c2 = chan[i]  # (E, n')
    offsets = (i2 * C + c2) * P + k[:, None]
    u = philox_uniform(seed.to(device), offsets)
    fire = u < gamma[i2]
    # Step 6: every element inside the block of a firing seed, as flat plane indices.
    e, j = fire.nonzero(as_tuple=True)
    centres = (i[e] * n_chan + j) * P + k[e]
    rel = torch.tensor([dd * H * W + dh * W + dw for dd, dh, dw in geo.offsets()], dtype=torch.int64, device=device)
    dropped = torch.zeros(N * n_chan * P, dtype=torch.bool, device=device)
    dropped[(centres[:, None] + rel).reshape(-1)] = True  # valid centres: blocks stay inside their plane
    dropped = dropped.reshape(N, n_chan, P)
    counts = dropped.reshape(N, -1).sum(1)
    slots_out.copy_(slots)
    bits_out.copy_(state.pack_bits(dropped))
    dropped_out.copy_(counts)
    rate_out.copy_(gamma)
    scale_out.copy_(scale_from_dropped(geo, N, counts, scale_out.dtype))


def _apply(x, y, slots, bits, scale) -> None:
    """Step 8: y = where(dropped, +0.0, x * scale), one rounding to x's dtype (y may be x)."""
    N = x.shape[0]
    s = scale.reshape((N,) + (1,) * (x.dim() - 1))
    if x.dtype == scale.dtype:
        torch.mul(x, s, out=y)
    else:
        y.copy_(x.to(scale.dtype) * s)
    if slots.numel():
        taken = torch.sort(slots, dim=1).values
        if not (int(slots.min()) >= -1 and int(slots.max()) < bits.shape[1]) or bool(
                ((taken[:, 1:] == taken[:, :-1]) & (taken[:, 1:] >= 0)).any()):
            raise ValueError("camdrop_kernels op: slots must hold -1 or a distinct plane index of bits per sample")
    mask = state.dense_mask(slots, bits, tuple(x.shape[2:]))
    y.masked_fill_(mask, 0.0)


class PlainBackend(Backend):
    name = "plain"

    def build_state(self, x, cam, alpha, seed, drop_prob, opts, out) -> None:
        _build_state(x, cam, alpha, seed, drop_prob, opts, out)

    def apply(self, x, y, slots, bits, scale) -> None:
        _apply(x, y, slots, bits, scale)
