"""Gradients: to x only, zero where dropped, dy * scale elsewhere; gradcheck in float64."""
import pytest
import torch

import camdrop_kernels as ck

from conftest import DEVICE


def inputs(dtype=torch.float64, shape=(2, 6, 7, 5)):
    g = torch.Generator().manual_seed(0)
    N, C, H, W = shape
    x = torch.randn(shape, generator=g, dtype=dtype).to(DEVICE)
    cam = torch.randn(N, H, W, generator=g, dtype=dtype).to(DEVICE)
    alpha = torch.randn(N, C, generator=g, dtype=dtype).to(DEVICE)
    return x, cam, alpha


@pytest.mark.parametrize("normalize", ["batch", "sample", "none"])
def test_gradcheck_float64(normalize, compiled_backend):
    backend = compiled_backend
    x, cam, alpha = inputs()
    kw = dict(drop_prob=0.6, block_size=2, gamma_mode="eligible", normalize=normalize, seed=11, backend=backend)
    assert ck.camdrop_mask(x, cam, alpha, **kw).any(), "the case must drop something"
    f = lambda t: ck.camdrop(t, cam, alpha, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x.requires_grad_(),))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_gradient_is_masked_scale(backend):
    x, cam, alpha = inputs(torch.float32)
    kw = dict(drop_prob=0.8, block_size=3, gamma_mode="eligible", normalize="sample", seed=5, backend=backend)
    mask = ck.camdrop_mask(x, cam, alpha, **kw)
    x.requires_grad_()
    y = ck.camdrop(x, cam, alpha, **kw)
    dy = torch.randn_like(y)
    y.backward(dy)
    kept = (~mask).reshape(2, -1).sum(1).tolist()
    scale = torch.tensor([mask[0].numel() / k for k in kept], dtype=torch.float32, device=DEVICE).reshape(-1, 1, 1, 1)
    assert torch.equal(x.grad, torch.where(mask, 0.0, dy * scale))


def test_no_gradient_reaches_cam_or_alpha(backend):
    x, cam, alpha = inputs(torch.float32)
    for t in (x, cam, alpha):
        t.requires_grad_()
    ck.camdrop(x, cam, alpha, 0.5, 3, seed=1, backend=backend).sum().backward()
    assert x.grad is not None and cam.grad is None and alpha.grad is None


def test_inplace_backward_matches_out_of_place(backend):
    x, cam, alpha = inputs(torch.float32)
    kw = dict(drop_prob=0.8, block_size=3, gamma_mode="eligible", seed=9, backend=backend)
    a = x.clone().requires_grad_()
    ck.camdrop(a, cam, alpha, **kw).pow(2).sum().backward()
    b = x.clone().requires_grad_()
    h = b * 1.0
    out = ck.camdrop(h, cam, alpha, inplace=True, **kw)
    assert out is h
    out.pow(2).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_inplace_refuses_leaf_requiring_grad():
    x, cam, alpha = inputs(torch.float32)
    x.requires_grad_()
    with pytest.raises(RuntimeError, match="leaf"):
        ck.camdrop(x, cam, alpha, 0.5, 3, inplace=True)


def test_inplace_refuses_expanded_x():
    x, cam, alpha = inputs(torch.float32)
    expanded = x[:, :1].expand(-1, x.shape[1], -1, -1)
    with pytest.raises(ValueError, match="overlapping"):
        ck.camdrop(expanded, cam, alpha, 0.5, 3, inplace=True)


def test_import_and_cpu_use_without_triton(tmp_path):
    """``import camdrop_kernels`` and the CPU path work when triton is not installed."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, camdrop_kernels as ck\n"
        "from camdrop_kernels import backends\n"
        "assert not backends.triton_available()\n"
        "x = torch.randn(2, 8, 6, 6)\n"
        "y = ck.camdrop(x, torch.randn(2, 6, 6), torch.randn(2, 8), 0.5, 3, seed=1)\n"
        "assert y.shape == x.shape\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
