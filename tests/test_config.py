"""Shape-dependent constants: geometry, counts, and the float64 arithmetic of rates and scales."""
import random

import pytest
import torch

from camdrop_kernels.config import CamDropConfig, round_to_float32


def build(shape, block_size=7, shape_kind="square", **kw):
    args = dict(drop_prob=0.1, block_size=block_size, top_pixels=None, top_channels=None, block_shape=shape_kind,
                normalize="batch", gamma_mode="dropblock", gamma_scale=1.0)
    args.update(kw)
    return CamDropConfig.build(shape, **args)


@pytest.mark.parametrize("normalize", ["batch", "sample"])
def test_scale_is_one_correctly_rounded_quotient(normalize):
    """float64 numel / kept, as Python divides floats (torch's scalar / tensor rounds twice)."""
    N, C, H, W = 3, 5, 7, 11
    cfg = build((N, C, H, W), normalize=normalize)
    per_sample = C * H * W
    for _ in range(200):
        dropped = torch.tensor([random.randrange(per_sample + 1) for _ in range(N)])
        got = cfg.scale_from_dropped(dropped, torch.float64).tolist()
        if normalize == "batch":
            kept = N * per_sample - int(dropped.sum())
            want = [N * per_sample / kept if kept else 0.0] * N
        else:
            want = [per_sample / (per_sample - d) if d < per_sample else 0.0 for d in dropped.tolist()]
        assert got == want


def test_eligible_rate_is_one_correctly_rounded_quotient():
    cfg = build((2, 16, 9, 9), block_size=3, gamma_mode="eligible", drop_prob=0.37, gamma_scale=1.3)
    counts = torch.arange(0, 40)
    got = cfg.seed_rate(counts).tolist()
    num = 0.37 * 1.3 * (16 * 9 * 9)
    den = 9 * cfg.top_channels
    want = [round_to_float32(min(max(num / (den * k), 0.0), 1.0)) if k else 0.0 for k in counts.tolist()]
    assert got == want


@pytest.mark.parametrize("H,W,bs,shape,want", [
    (9, 9, 3, "square", dict(rh=3, rw=3, area=9, row_lo=1, row_hi=8, col_lo=1, col_hi=8)),
    (12, 7, 4, "square", dict(rh=4, rw=4, area=16, row_lo=2, row_hi=11, col_lo=2, col_hi=6)),
    (6, 6, 7, "square", dict(rh=6, rw=6, area=36, row_lo=3, row_hi=4, col_lo=3, col_hi=4)),
    (1, 1, 3, "square", dict(rh=1, rw=1, area=1, row_lo=0, row_hi=1, col_lo=0, col_hi=1)),
    (5, 8, 5, "diamond", dict(rho=2, area=13, row_lo=2, row_hi=3, col_lo=2, col_hi=6)),
    (16, 3, 4, "diamond", dict(rho=1, area=5, row_lo=1, row_hi=15, col_lo=1, col_hi=2)),
    (4, 9, 4, "diamond", dict(rho=1, area=5, row_lo=1, row_hi=3, col_lo=1, col_hi=8)),
])
def test_geometry(H, W, bs, shape, want):
    cfg = build((1, 1, H, W), block_size=bs, shape_kind=shape)
    for key, value in want.items():
        assert getattr(cfg, key) == value, key
    assert len(cfg.block_offsets()) == cfg.area


@pytest.mark.parametrize("arg,total,default,want", [
    (None, 784, 16, 16), (5, 784, 16, 5), (10_000, 784, 16, 784), (0.25, 784, 16, 196), (1e-9, 784, 16, 1),
    (1.0, 256, 32, 256),
])
def test_counts(arg, total, default, want):
    cfg = build((1, total, 28, 28), top_channels=arg)
    assert cfg.top_channels == (want if arg is not None else max(1, total // 8))
