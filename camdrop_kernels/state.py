"""The state one CamDrop call leaves for its backward, in one format for every backend.

- ``slots`` (N, C) int32: the plane of ``bits`` that holds channel c of sample i if c is one of
  the sample's top channels (numbered in ascending channel order), else -1.
- ``bits`` (N, n', words) int32: bit p & 31 of word p >> 5 of plane j is set when pixel p (the
  row-major flat index over the spatial axes) of that top channel is dropped. One bit per
  element of the top channels only: at most 1/8 bit per element of x by default.
- ``scale`` (N,) float32 (float64 for float64 x): what kept elements are multiplied by.

Beside it each call reports, per sample, ``dropped`` (int64 count of dropped elements) and
``rate`` (float32 seed rate gamma; 1 means every eligible seed fired: the layer is saturated).
All of it stays on x's device; nothing here synchronises.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Tuple

import torch

from .options import Options, words_per_plane

WORD_BITS = 32


class State(NamedTuple):
    """What one call leaves: the saved state (slots, bits, scale) and the statistics (dropped, rate)."""

    slots: torch.Tensor
    bits: torch.Tensor
    scale: torch.Tensor
    dropped: torch.Tensor
    rate: torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype of the rescale: float64 for float64 x, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def allocate(x: torch.Tensor, opts: Options) -> State:
    """An uninitialised State for x: what every backend fills and what the fake (shape) kernels
    return. Works on symbolic sizes."""
    shape = x.shape
    N, C = shape[0], shape[1]
    P = math.prod(shape[2:])
    device = x.device
    i32, f32 = torch.int32, torch.float32
    return State(
        torch.empty(N, C, dtype=i32, device=device),
        torch.empty(N, opts.num_top_channels(C), words_per_plane(P), dtype=i32, device=device),
        torch.empty(N, dtype=torch.float64 if x.dtype == torch.float64 else f32, device=device),
        torch.empty(N, dtype=torch.int64, device=device),
        torch.empty(N, dtype=f32, device=device),
    )


def empty(out: State) -> State:
    """The state of an empty x, which drops nothing: every slot -1, scale 1 (0 elements kept of 0
    is not a division), no counts."""
    slots, bits, scale, dropped, rate = out
    slots.fill_(-1)
    bits.zero_()
    scale.fill_(1.0)
    dropped.zero_()
    rate.zero_()
    return out


def pack_bits(dropped: torch.Tensor) -> torch.Tensor:
    """bool (N, n', P) -> int32 (N, n', words), the bit layout above (plain torch ops)."""
    N, J, P = dropped.shape
    words = words_per_plane(P)
    padded = torch.zeros((N, J, words * WORD_BITS), dtype=torch.int64, device=dropped.device)
    padded[:, :, :P] = dropped
    weights = torch.ones(WORD_BITS, dtype=torch.int64, device=dropped.device) << torch.arange(
        WORD_BITS, device=dropped.device)
    packed = (padded.reshape(N, J, words, WORD_BITS) * weights).sum(-1)
    # Words with bit 31 set wrap to negative int32 (two's complement), as the kernels store them.
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def unpack_bits(bits: torch.Tensor, pixels: int) -> torch.Tensor:
    """int32 (N, n', words) -> bool (N, n', pixels)."""
    shifts = torch.arange(WORD_BITS, device=bits.device, dtype=torch.int32)
    flat = ((bits[..., None] >> shifts) & 1).reshape(bits.shape[0], bits.shape[1], -1)
    return flat[..., :pixels] != 0


def dense_mask(slots: torch.Tensor, bits: torch.Tensor, spatial: Tuple[int, ...]) -> torch.Tensor:
    """Bool (N, C, *spatial), True where dropped, from the compact state (for plots and tests)."""
    N, C = slots.shape
    P = math.prod(spatial)
    planes = unpack_bits(bits, P)  # (N, n', P)
    if planes.shape[1] == 0 or C == 0:
        return torch.zeros((N, C) + tuple(spatial), dtype=torch.bool, device=bits.device)
    picked = planes.gather(1, slots.clamp(min=0).long()[:, :, None].expand(N, C, P))
    return (picked & (slots >= 0)[:, :, None]).reshape((N, C) + tuple(spatial))
