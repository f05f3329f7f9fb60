"""Seeds: the same seed gives the same mask; None draws from the (given or default) generator."""
import torch

import camdrop_kernels as ck
from camdrop_kernels import reference
from camdrop_kernels.philox import make_seed

from conftest import DEVICE


def inputs():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 32, 12, 12, generator=g).to(DEVICE)
    return x, torch.randn(4, 12, 12, generator=g).to(DEVICE), torch.randn(4, 32, generator=g).to(DEVICE)


# gamma = 0.1 * (32*144) / (9 * 4 * 16) = 0.8: seeds depend on the stream.
KW = dict(drop_prob=0.1, block_size=3, gamma_mode="eligible")


def test_same_seed_same_mask_different_seed_different_mask(backend):
    x, cam, alpha = inputs()
    a = ck.camdrop_mask(x, cam, alpha, **KW, seed=1)
    assert torch.equal(a, ck.camdrop_mask(x, cam, alpha, **KW, seed=1))
    assert not torch.equal(a, ck.camdrop_mask(x, cam, alpha, **KW, seed=2))


def test_generator_reproduces_and_advances(backend):
    x, cam, alpha = inputs()
    g1 = torch.Generator(device=DEVICE).manual_seed(123)
    g2 = torch.Generator(device=DEVICE).manual_seed(123)
    first = ck.camdrop_mask(x, cam, alpha, **KW, generator=g1)
    assert torch.equal(first, ck.camdrop_mask(x, cam, alpha, **KW, generator=g2))
    second = ck.camdrop_mask(x, cam, alpha, **KW, generator=g1)
    assert not torch.equal(first, second)


def test_generator_matches_reference(backend):
    x, cam, alpha = inputs()
    y = ck.camdrop(x, cam, alpha, **KW, generator=torch.Generator(device=DEVICE).manual_seed(5))
    r = reference.camdrop(x, cam, alpha, **KW, generator=torch.Generator(device=DEVICE).manual_seed(5))
    assert torch.equal(y, r)


def test_default_generator_follows_manual_seed(backend):
    x, cam, alpha = inputs()
    torch.manual_seed(77)
    a = ck.camdrop_mask(x, cam, alpha, **KW)
    torch.manual_seed(77)
    assert torch.equal(a, ck.camdrop_mask(x, cam, alpha, **KW))


def test_extreme_seeds(backend):
    x, cam, alpha = inputs()
    for seed in (0, 2**32 - 1, 2**32, 2**63 - 1):
        got = ck.camdrop_mask(x, cam, alpha, **KW, seed=seed)
        assert torch.equal(got.cpu(), reference.camdrop_mask(x.cpu(), cam.cpu(), alpha.cpu(), **KW, seed=seed))


def test_seed_tensor_is_drawn_without_a_device_launch_in_eager_mode():
    """seed=None in eager mode draws on the CPU (no kernel launch, no sync) for any x; an int seed
    becomes a CPU tensor the kernels read by value."""
    x = torch.empty(2, 3, 4, 4, device="meta")
    assert make_seed(None, None, x).device.type == "cpu"
    assert make_seed(7, None, x).item() == 7
    torch.manual_seed(5)
    a = make_seed(None, None, x)
    torch.manual_seed(5)
    assert torch.equal(a, make_seed(None, None, x))
