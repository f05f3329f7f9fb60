"""Two cases whose masks are derived on paper from SPEC.md, checked on every backend.

Both use drop_prob = 1 in "eligible" mode, where the seed rate clamps to 1; U < 1 always
(its largest value is 1 - 2**-24), so every eligible position is a seed whatever the
seed, and the mask is fixed by ranking and geometry alone. Each is run with several
random seeds.
"""
import random

import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels import reference

from conftest import DEVICE, assert_bitwise_equal

NAN = float("nan")


def case_square_even_block():
    """x (1, 2, 4, 4); block_size 2 (even); top_pixels 3; top_channels 1; normalize "batch".

    Pixels: the two 5s tie, flat 5 = (1,1) before flat 10 = (2,2); then the two 2s tie,
    flat 6 = (1,2) before flat 9 = (2,1). S = {(1,1), (2,2), (1,2)}.
    Channels: alpha = [1, 3] puts channel 1 first.
    Valid centres for rh = rw = 2: rh//2 = 1 <= u < 4 - (2-1)//2 = 4, so u, v in {1, 2, 3}:
    all of S. gamma = 1 * 1 * (2*4*4) / (A=4 * n'=1 * |S∩V|=3) = 8/3, clamped to 1.
    A seed at (u, v) drops rows u-1..u and columns v-1..v:
      (1,1) -> rows 0-1, cols 0-1; (2,2) -> rows 1-2, cols 1-2; (1,2) -> rows 0-1, cols 1-2.
    Union in channel 1: row 0 cols 0,1,2; row 1 cols 0,1,2; row 2 cols 1,2: 8 elements.
    kept = 32 - 8 = 24, scale = 32 / 24 = 4/3 for the batch.
    """
    cam = torch.tensor([[[0.0, 1.0, 1.0, 0.0],
                         [0.0, 5.0, 2.0, 0.0],
                         [0.0, 2.0, 5.0, 0.0],
                         [0.0, 0.0, 0.0, 0.0]]])
    alpha = torch.tensor([[1.0, 3.0]])
    dropped = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    dropped[0, 1, 0, 0:3] = True
    dropped[0, 1, 1, 0:3] = True
    dropped[0, 1, 2, 1:3] = True
    kwargs = dict(drop_prob=1.0, block_size=2, top_pixels=3, top_channels=1, block_shape="square",
                  normalize="batch", gamma_mode="eligible")
    scale = torch.tensor([4.0 / 3.0, 4.0 / 3.0], dtype=torch.float64)[:1]
    return (1, 2, 4, 4), cam, alpha, dropped, scale, kwargs


def case_diamond_nan_signed_zero():
    """x (2, 3, 5, 6); diamond, block_size 3; top_pixels 2; top_channels 1; normalize "sample".

    Geometry: rho = min(3, 5, 6) // 2 = 1 (2*1+1 = 3 <= 5), A = 2*1*2 + 1 = 5;
    valid centres 1 <= u < 4, 1 <= v < 5.
    Sample 0: cam is NaN (ranks as -inf) except 9 at (0,0) and 4 at (2,3): S = {(0,0), (2,3)};
    (0,0) is not a valid centre, so S∩V = {(2,3)}, gamma = 90 / (5*1*1) -> 1. alpha = [.5, -1, .5]:
    channels 0 and 2 tie, the lower index wins: K = {0}. The diamond around (2,3) is
    (1,3), (2,2), (2,3), (2,4), (3,3): 5 dropped; scale_0 = 90 / 85.
    Sample 1: cam is -1 except +0.0 at (1,4) (flat 10), -0.0 at (3,1) (flat 19) and +0.0 at
    (3,2) (flat 20). -0.0 equals +0.0, so the tie goes by index: S = {flat 10, flat 19} =
    {(1,4), (3,1)} (treating -0.0 as smaller would pick (3,2) instead). Both valid, gamma -> 1.
    alpha = [NaN, 2, 7]: K = {2}. Diamonds: (0,4), (1,3), (1,4), (1,5), (2,4) and (2,1), (3,0),
    (3,1), (3,2), (4,1): 10 dropped, no overlap; scale_1 = 90 / 80.
    """
    cam = torch.full((2, 5, 6), NAN)
    cam[0, 0, 0] = 9.0
    cam[0, 2, 3] = 4.0
    cam[1] = -1.0
    cam[1, 1, 4] = 0.0
    cam[1, 3, 1] = -0.0
    cam[1, 3, 2] = 0.0
    assert torch.signbit(cam[1, 3, 1]) and not torch.signbit(cam[1, 3, 2])
    alpha = torch.tensor([[0.5, -1.0, 0.5], [NAN, 2.0, 7.0]])
    dropped = torch.zeros(2, 3, 5, 6, dtype=torch.bool)
    for h, w in [(1, 3), (2, 2), (2, 3), (2, 4), (3, 3)]:
        dropped[0, 0, h, w] = True
    for h, w in [(0, 4), (1, 3), (1, 4), (1, 5), (2, 4), (2, 1), (3, 0), (3, 1), (3, 2), (4, 1)]:
        dropped[1, 2, h, w] = True
    kwargs = dict(drop_prob=1.0, block_size=3, top_pixels=2, top_channels=1, block_shape="diamond",
                  normalize="sample", gamma_mode="eligible")
    scale = torch.tensor([90 / 85, 90 / 80], dtype=torch.float64)
    return (2, 3, 5, 6), cam, alpha, dropped, scale, kwargs


@pytest.mark.parametrize("make", [case_square_even_block, case_diamond_nan_signed_zero])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_hand_worked(make, dtype, backend):
    shape, cam, alpha, dropped, scale, kwargs = make()
    cdt = torch.float64 if dtype == torch.float64 else torch.float32
    rng = random.Random(f"{make.__name__}-{dtype}")
    gen = torch.Generator().manual_seed(rng.randrange(2**32))
    for _ in range(3):
        seed = rng.randrange(2**63)
        x = torch.randn(shape, generator=gen).to(dtype)
        want = torch.where(dropped, 0.0, x.to(cdt) * scale.to(cdt).reshape(-1, 1, 1, 1)).to(dtype)
        for impl in ("reference", backend):
            if impl == "reference":
                mask = reference.camdrop_mask(x, cam, alpha, seed=seed, **kwargs)
                y = reference.camdrop(x, cam, alpha, seed=seed, **kwargs)
            else:
                args = (x.to(DEVICE), cam.to(DEVICE), alpha.to(DEVICE))
                mask = ck.camdrop_mask(*args, seed=seed, **kwargs)
                y = ck.camdrop(*args, seed=seed, **kwargs)
            assert torch.equal(mask.cpu(), dropped), impl
            assert_bitwise_equal(y.cpu(), want, impl)
