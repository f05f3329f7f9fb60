"""Public API behaviour: no-ops, empty tensors, layouts, every rank, the modules, the guidance helpers."""
import pytest
import torch
import torch.nn.functional as F

import camdrop_kernels as ck

from conftest import DEVICE

FUNCTIONS = {1: (ck.camdrop1d, ck.camdrop1d_mask), 2: (ck.camdrop, ck.camdrop_mask), 3: (ck.camdrop3d, ck.camdrop3d_mask)}
SPATIAL = {1: (23,), 2: (7, 9), 3: (3, 5, 6)}


def inputs(rank=2, N=2, C=16, dtype=torch.float32, spatial=None):
    S = SPATIAL[rank] if spatial is None else spatial
    g = torch.Generator().manual_seed(0)
    return (torch.randn(N, C, *S, generator=g).to(dtype).to(DEVICE), torch.randn(N, *S, generator=g).to(DEVICE),
            torch.randn(N, C, generator=g).to(DEVICE))


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_no_op_returns_x_itself(rank, backend):
    fn, mask_fn = FUNCTIONS[rank]
    x, cam, alpha = inputs(rank)
    assert fn(x, cam, alpha, 0.0) is x
    assert fn(x, cam, alpha, 0.5, training=False) is x
    assert not mask_fn(x, cam, alpha, 0.0).any()


@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (2, 0, 5, 5), (2, 4, 0, 5), (2, 4, 5, 0)])
def test_empty_tensors_return_x(shape, backend):
    N, C, H, W = shape
    x, cam, alpha = torch.randn(shape, device=DEVICE), torch.randn(N, H, W, device=DEVICE), torch.randn(N, C, device=DEVICE)
    assert ck.camdrop(x, cam, alpha, 0.5) is x
    mask = ck.camdrop_mask(x, cam, alpha, 0.5)
    assert mask.shape == x.shape and mask.dtype == torch.bool


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_cam_with_channel_axis_is_accepted(rank, backend):
    fn = FUNCTIONS[rank][0]
    x, cam, alpha = inputs(rank)
    a = fn(x, cam, alpha, 0.5, 3, seed=4)
    assert torch.equal(a, fn(x, cam[:, None], alpha, 0.5, 3, seed=4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_dtype_and_layout(dtype, backend):
    x, cam, alpha = inputs(dtype=dtype)
    y = ck.camdrop(x, cam, alpha, 0.5, 3, seed=1)
    assert y.dtype == dtype and y.is_contiguous()
    xc = x.contiguous(memory_format=torch.channels_last)
    yc = ck.camdrop(xc, cam, alpha, 0.5, 3, seed=1)
    assert yc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, yc)
    x3, cam3, alpha3 = inputs(3, dtype=dtype)
    x3c = x3.contiguous(memory_format=torch.channels_last_3d)
    y3 = ck.camdrop3d(x3c, cam3, alpha3, 0.5, 3, seed=1)
    assert y3.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(y3, ck.camdrop3d(x3, cam3, alpha3, 0.5, 3, seed=1))


def test_dropped_elements_are_positive_zeros_even_for_inf_and_nan(backend):
    x, cam, alpha = inputs()
    x[:] = float("nan")
    x[:, :, ::2] = float("-inf")
    kw = dict(drop_prob=1.0, block_size=3, seed=2)
    mask = ck.camdrop_mask(x, cam, alpha, **kw)
    y = ck.camdrop(x, cam, alpha, **kw)
    assert mask.any()
    assert torch.equal(y[mask], torch.zeros(int(mask.sum()), device=DEVICE))
    assert not torch.signbit(y[mask]).any()


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_only_top_channels_are_dropped(rank, backend):
    mask_fn = FUNCTIONS[rank][1]
    x, cam, alpha = inputs(rank)
    mask = mask_fn(x, cam, alpha, 1.0, 3, top_channels=3, seed=3)
    hit = mask.flatten(2).any(2)
    top = torch.zeros_like(hit).scatter_(1, alpha.topk(3, dim=1).indices, True)
    assert hit.any() and not (hit & ~top).any()


def test_default_gamma_mode_is_eligible_spec_v2(backend):
    """SPEC v2: the default rate makes drop_prob the share of the sample dropped (before overlaps)."""
    x, cam, alpha = inputs(C=64, spatial=(14, 14))
    default = ck.camdrop_mask(x, cam, alpha, 0.02, 3, seed=7)
    assert torch.equal(default, ck.camdrop_mask(x, cam, alpha, 0.02, 3, gamma_mode="eligible", seed=7))
    assert not torch.equal(default, ck.camdrop_mask(x, cam, alpha, 0.02, 3, gamma_mode="dropblock", seed=7))


@pytest.mark.parametrize("cls,rank", [(ck.CamDrop1d, 1), (ck.CamDrop2d, 2), (ck.CamDrop3d, 3)])
def test_module_train_and_eval(cls, rank, backend):
    x, cam, alpha = inputs(rank)
    layer = cls(0.5, 3)
    torch.manual_seed(0)
    y = layer(x, cam, alpha)
    assert y is not x and (y == 0).any()
    assert layer.last_dropped.shape == (2,) and float(layer.last_dropped_fraction) > 0
    layer.eval()
    assert layer(x, cam, alpha) is x
    assert cls(0.0).train()(x, cam, alpha) is x


def test_module_repr():
    r = repr(ck.CamDrop2d(0.2, 5, top_channels=0.25, block_shape="diamond", gamma_scale=2.0))
    assert r == ("CamDrop2d(drop_prob=0.2, block_size=5, block_shape='diamond', top_channels=0.25, "
                 "normalize='batch', gamma_mode='eligible', gamma_scale=2.0)")


def test_channel_importance_groups_and_pools():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(10, 12, generator=g)
    t = torch.tensor([3, 7])
    grouped = ck.channel_importance(w, t, 4)
    assert torch.allclose(grouped, w[t].reshape(2, 4, 3).mean(-1))
    assert torch.equal(ck.channel_importance(w, t, 12), w[t])
    pooled = ck.channel_importance(w, t, 5)  # 12 is not a multiple of 5: adaptive pooling
    assert torch.allclose(pooled, F.adaptive_avg_pool1d(w[t][:, None], 5)[:, 0])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.uint16,
                                   torch.uint32, torch.uint64])
def test_channel_importance_accepts_any_integer_class_indices(dtype):
    """Regression: uint8/int16 class indices passed the check, then failed in index_select (and
    uint16/32/64 were refused as "not integer")."""
    w = torch.randn(10, 12, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([3, 7])
    assert torch.equal(ck.channel_importance(w, t.to(dtype), 4), ck.channel_importance(w, t, 4))


def test_channel_importance_soft_targets_mix_rows():
    w = torch.randn(10, 8, generator=torch.Generator().manual_seed(2))
    soft = torch.zeros(2, 10)
    soft[0, 1], soft[0, 4] = 0.7, 0.3
    soft[1, 9] = 1.0
    got = ck.channel_importance(w, soft, 8)
    assert torch.allclose(got[0], 0.7 * w[1] + 0.3 * w[4])
    assert torch.allclose(got[1], w[9])


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided", "one channel"])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_class_activation_map_any_rank(rank, layout):
    """One bmm over x as laid out: channels innermost (channels_last), outermost, or neither (a
    sliced view, which the reshape copies); the same map whichever."""
    x, _, alpha = inputs(rank, dtype=torch.float64, C=1 if layout == "one channel" else 16)
    alpha = alpha.double()
    if layout == "channels_last":
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)  # (channels innermost, for every rank)
        assert x.stride(1) == 1
    elif layout == "strided":
        x = torch.cat([x, x], dim=-1)[..., ::2]
    want = (alpha.reshape(alpha.shape + (1,) * rank) * x).sum(1)
    got = ck.class_activation_map(x, alpha)
    assert got.shape == want.shape and torch.allclose(got, want)
