"""Options and geometry: validation once, typed caching, the key round trip, block geometry and
counts for every rank, and the float64 arithmetic of rates and scales."""
import pickle
import random

import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels import options, reference
from camdrop_kernels.backends import plain as torch_ops
from camdrop_kernels.options import Options

from conftest import DEVICE


def opts(rank=2, block_size=7, top_pixels=None, top_channels=None, block_shape="square", normalize="batch",
         gamma_mode="eligible", gamma_scale=1.0):
    return Options.get(rank, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode, gamma_scale)


def test_int_and_float_counts_are_different_requests(backend):
    """Regression: `1` (one pixel) and `1.0` (all pixels) once shared a cache entry, so after a call
    with 1.0 a call with 1 selected every pixel (and the reference used the same cache)."""
    x = torch.ones(1, 1, 6, 6, device=DEVICE)
    cam = torch.arange(36.0, device=DEVICE).reshape(1, 6, 6)
    alpha = torch.ones(1, 1, device=DEVICE)
    kw = dict(drop_prob=1.0, block_size=1, gamma_mode="eligible", seed=0)
    everything = ck.camdrop_mask(x, cam, alpha, top_pixels=1.0, **kw)
    one = ck.camdrop_mask(x, cam, alpha, top_pixels=1, **kw)
    assert int(everything.sum()) == 36 and int(one.sum()) == 1
    assert torch.equal(one.cpu(), reference.camdrop_mask(x.cpu(), cam.cpu(), alpha.cpu(), top_pixels=1, **kw))
    assert opts(top_pixels=1) != opts(top_pixels=1.0)
    assert opts(top_pixels=1).geometry(4, (6, 6)).top_pixels == 1
    assert opts(top_pixels=1.0).geometry(4, (6, 6)).top_pixels == 36


def test_options_are_validated_once_and_cached():
    a = opts(block_size=5, top_channels=0.25)
    assert a is opts(block_size=5, top_channels=0.25)
    assert Options.decode(a.key) is a
    assert a == pickle.loads(pickle.dumps(a))
    with pytest.raises(ValueError, match="block_shape"):
        opts(block_shape="round")
    for bad in ("", "2|7", "2|7|-|-|square|batch|eligible|1.0|x", "9|7|-|-|square|batch|eligible|1.0",
                "2|0|-|-|square|batch|eligible|1.0", "2|7|f2.0|-|square|batch|eligible|1.0",
                "2|7|-|-|square|batch|eligible|nan", "2|07|-|-|square|batch|eligible|1.0"):
        with pytest.raises(ValueError, match="Options.key"):
            Options.decode(bad)
    with pytest.raises(TypeError):
        Options.decode(7)


def test_every_argument_is_cached_by_type():
    """Review findings: block_size=7.0 was refused, then accepted once 7 had been cached (and True
    after 1); a numpy float fraction produced a key no other process could decode."""
    import numpy as np

    x, cam, alpha = torch.randn(2, 4, 5, 6), torch.randn(2, 5, 6), torch.randn(2, 4)
    ck.camdrop(x, cam, alpha, 0.1, 7)
    ck.camdrop(x, cam, alpha, 0.1, 1)
    for bad in (7.0, True):
        with pytest.raises(TypeError, match="block_size"):
            ck.camdrop(x, cam, alpha, 0.1, bad)
    with pytest.raises(TypeError, match="block_size"):
        ck.CamDrop2d(0.1, 7.0)
    o = opts(top_pixels=np.float64(0.5), gamma_scale=np.float32(2.0))
    assert o == opts(top_pixels=0.5, gamma_scale=2.0)
    assert o.key == "2|7|f0.5|-|square|batch|eligible|2.0"


def test_the_decode_cache_is_bounded():
    from camdrop_kernels import options

    for k in range(5000):
        opts(gamma_scale=1.0 + k / 8192)
    assert len(options._DECODED) <= 4096 and len(options._CACHE) <= 4096


def test_huge_block_size_is_clamped_not_overflowing():
    """Regression: block_size >= 2**63 passed validation, then failed converting to a C long."""
    x, cam, alpha = torch.randn(2, 4, 5, 6), torch.randn(2, 5, 6), torch.randn(2, 4)
    for bs in (2**63, 2**80):
        got = ck.camdrop(x, cam, alpha, 0.5, bs, seed=3)
        assert torch.equal(got, ck.camdrop(x, cam, alpha, 0.5, 6, seed=3))  # min(block_size, 5) / min(., 6)
        assert torch.equal(ck.camdrop_mask(x, cam, alpha, 0.5, bs, seed=3), ck.camdrop_mask(x, cam, alpha, 0.5, 6, seed=3))
        y = x.clone()
        ck.camdrop(y, cam, alpha, 0.5, bs, seed=3, inplace=True)
        assert torch.equal(y, got)
        assert torch.equal(got, reference.camdrop(x, cam, alpha, 0.5, bs, seed=3))


@pytest.mark.parametrize("spatial,bs,shape,want", [
    ((9, 9), 3, "square", dict(up=(0, 1, 1), lo=(0, 1, 1), hi=(1, 8, 8), area=9)),
    ((12, 7), 4, "square", dict(up=(0, 2, 2), down=(0, 1, 1), lo=(0, 2, 2), hi=(1, 11, 6), area=16)),
    ((6, 6), 7, "square", dict(lo=(0, 3, 3), hi=(1, 4, 4), area=36)),
    ((1, 1), 3, "square", dict(lo=(0, 0, 0), hi=(1, 1, 1), area=1)),
    ((5, 8), 5, "diamond", dict(rho=2, area=13, lo=(0, 2, 2), hi=(1, 3, 6))),
    ((16, 3), 4, "diamond", dict(rho=1, area=5, lo=(0, 1, 1), hi=(1, 15, 2))),
    ((4, 9), 4, "diamond", dict(rho=1, area=5, lo=(0, 1, 1), hi=(1, 3, 8))),
    ((20,), 4, "square", dict(lo=(0, 0, 2), hi=(1, 1, 19), area=4)),
    ((31,), 5, "diamond", dict(rho=2, area=5, lo=(0, 0, 2), hi=(1, 1, 29))),
    ((4, 6, 7), 3, "square", dict(lo=(1, 1, 1), hi=(3, 5, 6), area=27)),
    ((5, 5, 5), 3, "diamond", dict(rho=1, area=7, lo=(1, 1, 1), hi=(4, 4, 4))),
    ((2, 9, 9), 5, "diamond", dict(rho=0, area=1)),  # radius lowered to (min(S) - 1) // 2
])
def test_geometry(spatial, bs, shape, want):
    geo = opts(rank=len(spatial), block_size=bs, block_shape=shape).geometry(8, spatial)
    for key, value in want.items():
        assert getattr(geo, key) == value, key
    offsets = geo.offsets()
    assert len(offsets) == geo.area == sum(length for _, length in geo.runs)
    # The runs cover exactly the offsets (as flat indices relative to the seed).
    D, H, W = geo.dims
    flat = sorted((dd * H + dh) * W + dw for dd, dh, dw in offsets)
    assert flat == sorted(start + k for start, length in geo.runs for k in range(length))
    # The reference computes the same geometry on its own.
    ref_offsets, bounds = reference.block(spatial, bs, shape)
    assert len(ref_offsets) == geo.area
    assert [tuple(b) for b in bounds] == list(zip(geo.lo, geo.hi))[3 - len(spatial):]


@pytest.mark.parametrize("arg,total,want", [
    (None, 256, 32), (5, 256, 5), (10_000, 256, 256), (0.25, 256, 64), (1e-9, 256, 1), (1.0, 256, 256),
    (0.7, 30, 21),  # SPEC v2: one float64 product, floor(0.7 * 30) = 21
])
def test_channel_counts(arg, total, want):
    assert opts(top_channels=arg).geometry(total, (28, 28)).top_channels == want


def test_default_top_pixels_uses_the_square_area_for_diamonds_too():
    for shape in ("square", "diamond"):
        assert opts(block_size=3, block_shape=shape).geometry(8, (9, 9)).top_pixels == 81 // 9


@pytest.mark.parametrize("normalize", ["batch", "sample"])
def test_scale_is_one_correctly_rounded_quotient(normalize):
    """float64 numel / kept, as Python divides floats (torch's scalar / tensor rounds twice)."""
    N, C, H, W = 3, 5, 7, 11
    geo = opts(normalize=normalize).geometry(C, (H, W))
    per_sample = C * H * W
    rng = random.Random(11)
    for _ in range(200):
        dropped = torch.tensor([rng.randrange(per_sample + 1) for _ in range(N)])
        got = torch_ops.scale_from_dropped(geo, N, dropped, torch.float64).tolist()
        if normalize == "batch":
            kept = N * per_sample - int(dropped.sum())
            want = [N * per_sample / kept if kept else 0.0] * N
        else:
            want = [per_sample / (per_sample - d) if d < per_sample else 0.0 for d in dropped.tolist()]
        assert got == want


def test_eligible_rate_is_one_correctly_rounded_quotient():
    geo = opts(block_size=3, gamma_scale=1.3).geometry(16, (9, 9))
    counts = torch.arange(0, 40)
    got = torch_ops.seed_rate(geo, torch.tensor(0.37, dtype=torch.float64), counts).tolist()
    num = 0.37 * 1.3 * (16 * 9 * 9)
    den = 9 * geo.top_channels
    want = [reference.to_float32(min(max(num / (den * k), 0.0), 1.0)) if k else 0.0 for k in counts.tolist()]
    assert got == want


def test_gamma_scale_negative_zero_is_written_as_zero_whichever_sign_came_first():
    """-0.0 == 0.0 share a cache entry: a key that kept the sign of the first caller made the other
    spelling a refused key for the ops (order-dependent ValueError; found by hypothesis)."""
    for first, second in ((-0.0, 0.0), (0.0, -0.0)):
        options._CACHE.clear()
        options._DECODED.clear()
        a = Options.get(2, 3, None, 0.5, "square", "batch", "eligible", first)
        b = Options.get(2, 3, None, 0.5, "square", "batch", "eligible", second)
        assert a.key == b.key == "2|3|-|f0.5|square|batch|eligible|0.0"
        assert Options.decode("2|3|-|f0.5|square|batch|eligible|0.0") == a
        with pytest.raises(ValueError, match="is not a valid Options.key"):
            Options.decode("2|3|-|f0.5|square|batch|eligible|-0.0")
