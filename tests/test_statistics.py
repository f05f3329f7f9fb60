"""The dropped fraction in "eligible" mode against its expectation over many seeds.

The CAM has four top pixels 4 apart in an 8x8 map, so 3x3 blocks around them never
overlap and the dropped area is exactly 9 x (number of seeds): its expectation is
drop_prob of the sample with no overlap correction. With C = n' = 8 and |S∩V| = 4,
gamma = p * (8*64) / (9 * 8 * 4) = p * 16/9.
"""
import math

import pytest
import torch

import camdrop_kernels as ck

from conftest import DEVICE


@pytest.mark.parametrize("drop_prob", [0.1, 0.3, 0.5])
def test_eligible_fraction_matches_expectation(drop_prob, fast_backend):
    N, C, H, W = 4, 8, 8, 8
    cam = torch.zeros(N, H, W)
    for u, v in [(1, 1), (1, 5), (5, 1), (5, 5)]:
        cam[:, u, v] = 1.0
    alpha = torch.randn(N, C)
    x = torch.ones(N, C, H, W)
    args = (x.to(DEVICE), cam.to(DEVICE), alpha.to(DEVICE))
    gamma = drop_prob * 16 / 9
    trials = 150
    fractions = []
    for seed in range(trials):
        mask = ck.camdrop_mask(*args, drop_prob, 3, top_pixels=4, top_channels=1.0, gamma_mode="eligible",
                               seed=seed * 7919 + 1)
        fractions.append(mask.float().mean().item())
    mean = sum(fractions) / trials
    # Seeds per call ~ Binomial(N*C*4, gamma); the fraction is 9 * seeds / numel.
    sd = 9 * math.sqrt(N * C * 4 * gamma * (1 - gamma)) / x.numel() / math.sqrt(trials)
    assert abs(mean - drop_prob) < 5 * sd, (mean, drop_prob, sd)


def test_dropblock_mode_drops_far_less_than_drop_prob():
    """With guidance, DropBlock's rate drops about n'/C * (n/HW) of the expected area (SPEC.md step 4)."""
    g = torch.Generator().manual_seed(0)
    x = torch.ones(8, 64, 14, 14)
    cam, alpha = torch.randn(8, 14, 14, generator=g), torch.randn(8, 64, generator=g)
    frac = torch.stack([ck.camdrop_mask(x, cam, alpha, 0.5, 3, gamma_mode="dropblock", seed=s).float().mean()
                        for s in range(20)]).mean()
    assert 0 < frac < 0.5 / 8


def test_eligible_mode_saturates_below_drop_prob_and_reports_it():
    """SPEC v2: when drop_prob asks for more than the guided region holds, the rate clamps at 1,
    the share dropped is the most the top pixels' blocks in the top channels cover, and the layer
    says so (rate 1)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 64, 8, 8, generator=g)
    cam, alpha = torch.randn(4, 8, 8, generator=g), torch.randn(4, 64, generator=g)
    layer = ck.CamDrop2d(0.9, 3).train()
    layer(x, cam, alpha)
    assert bool(layer.saturated) and torch.all(layer.last_rate == 1.0)
    share = float(layer.last_dropped_fraction)
    assert 0 < share < 0.9 / 8 + 1e-9  # at most the top channels (C/8) can be dropped
    # Below saturation the share tracks drop_prob.
    layer.drop_prob = 0.01
    layer(x, cam, alpha)
    assert not bool(layer.saturated) and float(layer.last_dropped_fraction) < 0.05
