"""Public API behaviour: no-ops, empty tensors, layouts, the module, the guidance helpers."""
import pytest
import torch
import torch.nn.functional as F

import camdrop_kernels as ck

from conftest import DEVICE


def inputs(shape=(2, 16, 7, 9), dtype=torch.float32):
    N, C, H, W = shape
    return (torch.randn(shape, dtype=dtype, device=DEVICE), torch.randn(N, H, W, device=DEVICE),
            torch.randn(N, C, device=DEVICE))


def test_no_op_returns_x_itself(backend):
    x, cam, alpha = inputs()
    assert ck.camdrop(x, cam, alpha, 0.0, backend=backend) is x
    assert ck.camdrop(x, cam, alpha, 0.5, training=False, backend=backend) is x
    assert not ck.camdrop_mask(x, cam, alpha, 0.0, backend=backend).any()


@pytest.mark.parametrize("shape", [(0, 4, 5, 5), (2, 0, 5, 5), (2, 4, 0, 5), (2, 4, 5, 0)])
def test_empty_tensors_return_x(shape, backend):
    x, cam, alpha = inputs(shape)
    assert ck.camdrop(x, cam, alpha, 0.5, backend=backend) is x
    mask = ck.camdrop_mask(x, cam, alpha, 0.5, backend=backend)
    assert mask.shape == x.shape and mask.dtype == torch.bool


def test_cam_with_channel_axis_is_accepted(backend):
    x, cam, alpha = inputs()
    a = ck.camdrop(x, cam, alpha, 0.5, 3, seed=4, backend=backend)
    assert torch.equal(a, ck.camdrop(x, cam[:, None], alpha, 0.5, 3, seed=4, backend=backend))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_output_dtype_and_layout(dtype, backend):
    x, cam, alpha = inputs(dtype=dtype)
    y = ck.camdrop(x, cam, alpha, 0.5, 3, seed=1, backend=backend)
    assert y.dtype == dtype and y.is_contiguous()
    xc = x.contiguous(memory_format=torch.channels_last)
    yc = ck.camdrop(xc, cam, alpha, 0.5, 3, seed=1, backend=backend)
    assert yc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, yc)


def test_dropped_elements_are_exact_zeros_even_for_inf_and_nan(backend):
    x, cam, alpha = inputs()
    x[:] = float("nan")
    x[:, :, ::2] = float("inf")
    kw = dict(drop_prob=1.0, block_size=3, gamma_mode="eligible", seed=2, backend=backend)
    mask = ck.camdrop_mask(x, cam, alpha, **kw)
    y = ck.camdrop(x, cam, alpha, **kw)
    assert mask.any()
    assert torch.equal(y[mask], torch.zeros(int(mask.sum()), device=DEVICE))
    assert not torch.signbit(y[mask]).any()


def test_only_top_channels_are_dropped(backend):
    x, cam, alpha = inputs()
    mask = ck.camdrop_mask(x, cam, alpha, 1.0, 3, top_channels=3, gamma_mode="eligible", seed=3, backend=backend)
    hit = mask.flatten(2).any(2)
    top = torch.zeros_like(hit).scatter_(1, alpha.topk(3, dim=1).indices, True)
    assert hit.any() and not (hit & ~top).any()


def test_module_train_and_eval(backend):
    x, cam, alpha = inputs()
    layer = ck.CamDrop2d(0.5, 3, gamma_mode="eligible", backend=backend)
    torch.manual_seed(0)
    y = layer(x, cam, alpha)
    assert y is not x and (y == 0).any()
    layer.eval()
    assert layer(x, cam, alpha) is x
    assert ck.CamDrop2d(0.0).train()(x, cam, alpha) is x


def test_module_repr():
    r = repr(ck.CamDrop2d(0.2, 5, top_channels=0.25, block_shape="diamond", gamma_scale=2.0))
    assert r == ("CamDrop2d(drop_prob=0.2, block_size=5, block_shape='diamond', top_channels=0.25, "
                 "normalize='batch', gamma_mode='dropblock', gamma_scale=2.0)")


def test_channel_importance_groups_and_pools():
    w = torch.randn(10, 12)
    t = torch.tensor([3, 7])
    grouped = ck.channel_importance(w, t, 4)
    assert torch.allclose(grouped, w[t].reshape(2, 4, 3).mean(-1))
    assert torch.equal(ck.channel_importance(w, t, 12), w[t])
    pooled = ck.channel_importance(w, t, 5)  # 12 is not a multiple of 5: adaptive pooling
    assert torch.allclose(pooled, F.adaptive_avg_pool1d(w[t][:, None], 5)[:, 0])


def test_channel_importance_soft_targets_mix_rows():
    w = torch.randn(10, 8)
    soft = torch.zeros(2, 10)
    soft[0, 1], soft[0, 4] = 0.7, 0.3
    soft[1, 9] = 1.0
    got = ck.channel_importance(w, soft, 8)
    assert torch.allclose(got[0], 0.7 * w[1] + 0.3 * w[4])
    assert torch.allclose(got[1], w[9])


def test_class_activation_map():
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    alpha = torch.randn(2, 3, dtype=torch.float64)
    want = (alpha[:, :, None, None] * x).sum(1)
    assert torch.allclose(ck.class_activation_map(x, alpha), want)
