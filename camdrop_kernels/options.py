"""Resolved CamDrop options: every argument validated once into one frozen object, and the
shape-dependent geometry and counts of SPEC.md steps 3-4 derived from it.

``Options`` holds what does not depend on the tensor (block size, counts as requested, modes);
it is cached by a *typed* key (``top_pixels=1`` and ``top_pixels=1.0`` are different requests)
and travels through the op schema as one string, ``Options.key``. ``Geometry`` adds the shape:
block extents, valid centres, the block as runs of consecutive pixels, and the counts n and n'.
The reference (``reference.py``) computes all of this again on its own, from SPEC.md, so a
mistake here cannot hide from the contract tests.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Optional, Tuple, Union

import torch

from . import validation

Top = Optional[Union[int, float]]

BLOCK_SHAPES = ("square", "diamond")
NORMALIZE_MODES = ("batch", "sample", "none")
# How the kernels number them (the native stages' Normalize enum, the Triton state kernel's flags).
NORMALIZE_CODES = {"batch": 0, "sample": 1, "none": 2}
GAMMA_MODES = ("eligible", "dropblock")
RANKS = (1, 2, 3)
# block_size only ever matters up to the largest axis (it is clamped per axis), so anything
# beyond this behaves alike; clamping keeps it a machine integer everywhere.
BLOCK_SIZE_LIMIT = 2**62


def resolve_count(value: Top, total, default):
    """n or n' of SPEC.md: None -> default; float f -> max(1, floor(f * total)) (one float64 product);
    int -> itself; clamped to [1, total]. Works on SymInts (fake tensors) too."""
    if value is None:
        count = default
    elif isinstance(value, float):
        count = max(1, math.floor(value * total))
    else:
        count = value
    return max(1, min(count, total))


def words_per_plane(pixels):
    """int32 words holding one plane's mask bits: bit p of the plane is bit p & 31 of word p >> 5."""
    return (pixels + 31) // 32


@dataclass(frozen=True, eq=False)
class Options:
    """Every CamDrop argument that is not a tensor, the rate or the seed, validated.

    Equality and hashing go by ``key``, which keeps ints and floats apart: a dataclass's own
    ``==`` would find ``top_pixels=1`` equal to ``top_pixels=1.0`` (1 == 1.0 in Python), and
    every cache keyed on it would mix the two requests up.
    """

    rank: int
    block_size: int
    top_pixels: Top
    top_channels: Top
    block_shape: str
    normalize: str
    gamma_mode: str
    gamma_scale: float
    key: str = field(init=False, repr=False, compare=False)

    @staticmethod
    def get(rank: int, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
            gamma_scale) -> "Options":
        """The validated options for these arguments (cached by value *and* type; torch.compile
        traces the validation itself, once per compiled call site, and never the cache)."""
        if torch.compiler.is_compiling():
            return Options._build(rank, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
                                  gamma_scale)
        key = (rank, block_size, type(block_size), top_pixels, type(top_pixels), top_channels, type(top_channels),
               block_shape, normalize, gamma_mode, gamma_scale, type(gamma_scale))
        try:
            return _CACHE[key]
        except (KeyError, TypeError):  # TypeError: an unhashable argument; validation names it
            pass
        opts = Options._build(rank, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
                              gamma_scale)
        if len(_CACHE) >= 4096:
            _CACHE.clear()
        if len(_DECODED) >= 4096:
            _DECODED.clear()
        _CACHE[key] = opts
        _DECODED[opts.key] = opts
        return opts

    @staticmethod
    def _build(rank, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
               gamma_scale) -> "Options":
        return Options(
            rank=rank,
            block_size=min(validation.check_block_size(block_size), BLOCK_SIZE_LIMIT),
            top_pixels=validation.check_top("top_pixels", top_pixels),
            top_channels=validation.check_top("top_channels", top_channels),
            block_shape=validation.check_choice("block_shape", block_shape, BLOCK_SHAPES),
            normalize=validation.check_choice("normalize", normalize, NORMALIZE_MODES),
            gamma_mode=validation.check_choice("gamma_mode", gamma_mode, GAMMA_MODES),
            gamma_scale=validation.check_gamma_scale(gamma_scale),
        )

    def __post_init__(self):
        # The options as one string (what the op schema carries; ``Options.decode`` inverts it).
        # Computed here, not lazily: torch.compile traces code that reads it.
        # ("%r" % (v,) rather than repr(v): under torch.compile(dynamic=True) the numbers may arrive as
        # symbolic floats and ints, which %-formatting specialises and repr() cannot trace.)
        key = "|".join(("%r" % (self.rank,), "%r" % (self.block_size,), _top_str(self.top_pixels),
                        _top_str(self.top_channels), self.block_shape, self.normalize, self.gamma_mode,
                        "%r" % (self.gamma_scale,)))
        object.__setattr__(self, "key", key)

    @staticmethod
    def decode(key: str) -> "Options":
        """Options from ``Options.key``; ValueError for anything else (the ops check what they are handed)."""
        try:
            return _DECODED[key]
        except (KeyError, TypeError):
            pass
        if not isinstance(key, str):
            raise TypeError(f"options must be a str made by Options.key; got {type(key).__name__}")
        parts = key.split("|")
        try:
            if len(parts) != 8 or parts[0] not in ("1", "2", "3"):
                raise ValueError
            opts = Options.get(int(parts[0]), int(parts[1]), _top_parse(parts[2]), _top_parse(parts[3]), parts[4],
                               parts[5], parts[6], float(parts[7]))
        except (ValueError, TypeError, OverflowError):
            raise ValueError(f"options {key[:200]!r} is not a valid Options.key") from None
        if opts.key != key:
            raise ValueError(f"options {key[:200]!r} is not a valid Options.key")
        return opts

    def __eq__(self, other) -> bool:
        return isinstance(other, Options) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)

    def geometry(self, channels: int, spatial: Tuple[int, ...]) -> "Geometry":
        """The geometry and counts for a map of ``spatial`` pixels and ``channels`` channels (cached)."""
        return _geometry(self, int(channels), tuple(int(s) for s in spatial))

    def small_map_warning(self, owner: str, channels: int, spatial: Tuple[int, ...]) -> Optional[str]:
        """What to tell a user whose map leaves fewer than a quarter of its pixels as seed centres
        (SPEC step 3: the whole block inside the map) while top_pixels is the default (P // block
        area): the layer then drops in few samples, if any (block 5 on 6x6: 4 of 36 centres, 1 top
        pixel; block 3 on 3x3: 1 of 9). None when the map is large enough or top_pixels was chosen
        (the user's call)."""
        if self.top_pixels is not None or len(spatial) != self.rank:
            return None
        g = self.geometry(channels, spatial)
        if 4 * g.num_valid >= g.P:
            return None
        return (f"{owner} (block_size={self.block_size}) on a {'x'.join(map(str, spatial))} map: only {g.num_valid} "
                f"of its {g.P} pixels can centre a whole block, and {g.top_pixels} top pixel"
                f"{'s are' if g.top_pixels != 1 else ' is'} eligible, so this layer will drop in few samples, if any "
                "(its last_dropped_fraction shows how much). Use a smaller block_size for maps this small "
                "(convert(..., block_size=...)), larger inputs, or place the layer at a larger map")

    def num_top_channels(self, channels):
        """n' (SymInt-friendly: fake tensors use it for the saved state's shape)."""
        return resolve_count(self.top_channels, channels, max(1, channels // 8))


_CACHE: dict = {}
_DECODED: dict = {}


def _top_str(value: Top) -> str:
    if value is None:
        return "-"
    return ("i%r" if isinstance(value, int) else "f%r") % (value,)


def _top_parse(text: str) -> Top:
    if text == "-":
        return None
    if text[:1] == "i":
        return int(text[1:])
    if text[:1] == "f":
        return float(text[1:])
    raise ValueError(text)


@dataclass(frozen=True)
class Geometry:
    """Shape-dependent constants of SPEC.md steps 3-4 for one (Options, C, spatial shape).

    Internally every map is 3-D: a 1-D map of length L is (1, 1, L) and a 2-D map (1, H, W);
    the padded axes have extent 1, block offset 0 and every centre valid, so one set of
    formulas serves all ranks (the diamond's radius still comes from the real axes only).
    """

    options: Options
    C: int
    spatial: Tuple[int, ...]  # the real spatial shape S
    dims: Tuple[int, int, int]  # S padded to (D, H, W)
    P: int  # pixels per plane
    up: Tuple[int, int, int]  # a seed at u covers u - up .. u + down on each axis (squares; diamonds: rho)
    down: Tuple[int, int, int]
    rho: int  # diamond radius (0 for squares)
    lo: Tuple[int, int, int]  # valid centres: lo <= u < hi on every axis
    hi: Tuple[int, int, int]
    area: int  # A
    num_valid: int  # |V|
    runs: Tuple[Tuple[int, int], ...]  # the block as (flat offset of the run's first pixel, length) along w
    top_pixels: int  # n
    top_channels: int  # n'
    words: int  # int32 words per mask plane

    def offsets(self):
        """Per-axis offsets (dd, dh, dw) of every pixel a seed at the origin drops."""
        out = []
        for dd in range(-self.up[0], self.down[0] + 1):
            for dh in range(-self.up[1], self.down[1] + 1):
                for dw in range(-self.up[2], self.down[2] + 1):
                    if self.rho == 0 or abs(dd) + abs(dh) + abs(dw) <= self.rho:
                        out.append((dd, dh, dw))
        return out

    def dropblock_rate(self, drop_prob: float) -> float:
        """gamma of the "dropblock" mode (float64 left to right, clamped), before rounding to float32."""
        g = drop_prob * self.options.gamma_scale * self.P / (self.area * self.num_valid) if self.num_valid else 0.0
        return min(max(g, 0.0), 1.0)


@functools.lru_cache(maxsize=1024)
def _geometry(opts: Options, C: int, spatial: Tuple[int, ...]) -> Geometry:
    rank = len(spatial)
    dims = (1,) * (3 - rank) + spatial
    real = range(3 - rank, 3)
    up, down = [0, 0, 0], [0, 0, 0]
    rho = 0
    if opts.block_shape == "square":
        for k in real:
            r = max(1, min(opts.block_size, dims[k]))
            up[k], down[k] = r // 2, (r - 1) // 2  # SAME max-pooling offsets, even sizes too
    else:
        side = min(spatial)
        rho = min(opts.block_size, side) // 2
        if 2 * rho + 1 > side:
            rho = max(0, (side - 1) // 2)
        for k in real:
            up[k] = down[k] = rho
    lo = tuple(up)
    hi = tuple(dims[k] - down[k] for k in range(3))
    num_valid = math.prod(max(0, h - l) for l, h in zip(lo, hi))
    runs = []
    D, H, W = dims
    for dd in range(-up[0], down[0] + 1):
        for dh in range(-up[1], down[1] + 1):
            if opts.block_shape == "square":
                left, length = up[2], up[2] + down[2] + 1
            else:
                half = rho - abs(dd) - abs(dh)
                if half < 0:
                    continue
                left, length = half, 2 * half + 1
            runs.append(((dd * H + dh) * W - left, length))
    area = sum(length for _, length in runs)
    P = D * H * W
    square_area = math.prod(max(1, min(opts.block_size, s)) for s in spatial)
    n_pix = resolve_count(opts.top_pixels, P, max(1, P // square_area))
    n_chan = resolve_count(opts.top_channels, C, max(1, C // 8))
    return Geometry(opts, C, spatial, dims, P, tuple(up), tuple(down), rho, lo, hi, area, num_valid, tuple(runs),
                    n_pix, n_chan, words_per_plane(P))
