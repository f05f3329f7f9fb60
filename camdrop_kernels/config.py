"""Resolved CamDrop parameters: everything that depends on shapes and arguments, not on data.

Every backend builds one :class:`CamDropConfig` from the same arguments, so block
geometry, counts and the seed rate are computed in exactly one place (SPEC.md,
steps 3 and 4).
"""
from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass
from typing import Tuple

import torch

BLOCK_SHAPES = ("square", "diamond")
NORMALIZE_MODES = ("batch", "sample", "none")
GAMMA_MODES = ("dropblock", "eligible")


def round_to_float32(value: float) -> float:
    """Round a Python float (float64) to the nearest float32, returned as a Python float."""
    return struct.unpack("f", struct.pack("f", value))[0]


def resolve_count(value, total: int, default: int) -> int:
    """Turn a validated ``top_pixels``/``top_channels`` argument into a count in [1, total].

    ``None`` takes ``default``; a float f in (0, 1] means ``max(1, floor(f * total))``;
    an int is a count. The result is clamped to ``total`` as SPEC.md says.
    """
    if value is None:
        count = default
    elif isinstance(value, float):
        count = max(1, math.floor(value * total))
    else:
        count = int(value)
    return max(1, min(count, total))


@dataclass(frozen=True)
class CamDropConfig:
    """Shape-dependent constants of one CamDrop call (SPEC.md steps 3 and 4)."""

    N: int
    C: int
    H: int
    W: int
    drop_prob: float
    block_shape: str
    rh: int  # square block height, min(block_size, H)
    rw: int  # square block width, min(block_size, W)
    rho: int  # diamond radius (0 for squares)
    area: int  # A: elements in one block
    row_lo: int  # valid seed centres: row_lo <= u < row_hi, col_lo <= v < col_hi
    row_hi: int
    col_lo: int
    col_hi: int
    top_pixels: int  # n
    top_channels: int  # n'
    normalize: str
    gamma_mode: str
    gamma_scale: float

    @staticmethod
    def build(
        shape: Tuple[int, int, int, int],
        drop_prob: float,
        block_size: int,
        top_pixels,
        top_channels,
        block_shape: str,
        normalize: str,
        gamma_mode: str,
        gamma_scale: float,
    ) -> "CamDropConfig":
        """The config for validated arguments (cached in eager mode: a training loop asks for the same
        few; under torch.compile it is built once at trace time anyway)."""
        make = CamDropConfig._make if torch.compiler.is_compiling() else _build
        return make(tuple(int(s) for s in shape), drop_prob, block_size, top_pixels, top_channels, block_shape,
                    normalize, gamma_mode, gamma_scale)

    @staticmethod
    def _make(shape, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
              gamma_scale) -> "CamDropConfig":
        N, C, H, W = shape
        rh, rw = min(block_size, H), min(block_size, W)
        if block_shape == "square":
            rho = 0
            area = rh * rw
            # A seed at u covers rows u - rh//2 .. u + (rh-1)//2 (SAME max-pool, even sizes too).
            row_lo, row_hi = rh // 2, H - (rh - 1) // 2
            col_lo, col_hi = rw // 2, W - (rw - 1) // 2
        else:
            side = min(H, W)
            rho = min(block_size, side) // 2
            if 2 * rho + 1 > side:
                rho = max(0, (side - 1) // 2)  # (max: an empty map has no geometry to speak of)
            area = 2 * rho * (rho + 1) + 1
            row_lo, row_hi = rho, H - rho
            col_lo, col_hi = rho, W - rho
        n_pix = resolve_count(top_pixels, H * W, max(1, (H * W) // max(1, rh * rw)))
        n_chan = resolve_count(top_channels, C, max(1, C // 8))
        return CamDropConfig(
            N, C, H, W, float(drop_prob), block_shape, rh, rw, rho, area,
            row_lo, row_hi, col_lo, col_hi, n_pix, n_chan, normalize, gamma_mode, float(gamma_scale),
        )

    @property
    def num_valid(self) -> int:
        """|V|: seed centres whose whole block lies inside the map (always >= 1)."""
        return (self.row_hi - self.row_lo) * (self.col_hi - self.col_lo)

    def block_offsets(self) -> list:
        """(du, dv) of every element a seed at (0, 0) drops, in row-major order."""
        if self.block_shape == "square":
            return [
                (du, dv)
                for du in range(-(self.rh // 2), (self.rh - 1) // 2 + 1)
                for dv in range(-(self.rw // 2), (self.rw - 1) // 2 + 1)
            ]
        r = self.rho
        return [(du, dv) for du in range(-r, r + 1) for dv in range(-r, r + 1) if abs(du) + abs(dv) <= r]

    def dropblock_rate(self) -> float:
        """gamma of the "dropblock" mode as a float32 value (float64 left to right, clamped, rounded)."""
        g = self.drop_prob * self.gamma_scale * (self.H * self.W) / (self.area * self.num_valid)
        return round_to_float32(min(max(g, 0.0), 1.0))

    def eligible_numerator(self) -> float:
        """``drop_prob * gamma_scale * (C*H*W)`` in float64: the per-sample-independent part."""
        return self.drop_prob * self.gamma_scale * (self.C * self.H * self.W)

    def seed_rate(self, eligible_count: torch.Tensor) -> torch.Tensor:
        """Per-sample gamma as a float32 tensor (N,), from |S_i ∩ V| (int tensor, N)."""
        if self.gamma_mode == "dropblock":
            return torch.full(eligible_count.shape, self.dropblock_rate(), dtype=torch.float32,
                              device=eligible_count.device)
        den = (self.area * self.top_channels) * eligible_count.to(torch.float64)
        # (A Python number divided by a tensor is a reciprocal then a product in torch: two
        # roundings. Dividing two float64 tensors is the one correctly rounded quotient.)
        g = (torch.full_like(den, self.eligible_numerator()) / den).clamp(0.0, 1.0)
        return torch.where(eligible_count == 0, 0.0, g).to(torch.float32)

    def scale_from_dropped(self, dropped_per_sample: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Per-sample scale (N,) in ``dtype`` from dropped counts (SPEC.md step 7).

        The quotient is float64 and rounded once to ``dtype``; kept = 0 gives 0.
        """
        per_sample = self.C * self.H * self.W
        if self.normalize == "none":
            return torch.ones(dropped_per_sample.shape, dtype=dtype, device=dropped_per_sample.device)
        if self.normalize == "batch":
            numel = self.N * per_sample
            kept = (numel - dropped_per_sample.sum()).expand(dropped_per_sample.shape)
        else:
            numel = per_sample
            kept = per_sample - dropped_per_sample
        kept = kept.to(torch.float64)
        scale = torch.where(kept == 0, 0.0, torch.full_like(kept, numel) / kept)
        return scale.to(dtype)


_build = functools.lru_cache(maxsize=512)(CamDropConfig._make)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Arithmetic dtype of the rescale: float64 for float64 x, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32
