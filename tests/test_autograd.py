"""Gradients: to x only, zero where dropped, dy * scale elsewhere; gradcheck in float64; in place."""
import subprocess
import sys

import pytest
import torch

import camdrop_kernels as ck

from conftest import DEVICE


def inputs(dtype=torch.float64, shape=(2, 6, 7, 5)):
    g = torch.Generator().manual_seed(0)
    N, C, *S = shape
    x = torch.randn(shape, generator=g, dtype=dtype).to(DEVICE)
    cam = torch.randn(N, *S, generator=g, dtype=dtype).to(DEVICE)
    alpha = torch.randn(N, C, generator=g, dtype=dtype).to(DEVICE)
    return x, cam, alpha


@pytest.mark.parametrize("normalize", ["batch", "sample", "none"])
def test_gradcheck_float64(normalize, fast_backend):
    x, cam, alpha = inputs()
    kw = dict(drop_prob=0.6, block_size=2, normalize=normalize, seed=11)
    assert ck.camdrop_mask(x, cam, alpha, **kw).any(), "the case must drop something"
    f = lambda t: ck.camdrop(t, cam, alpha, **kw)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x.requires_grad_(),))
    assert torch.autograd.gradgradcheck(f, (x,))


@pytest.mark.parametrize("fn,shape", [(ck.camdrop1d, (2, 6, 13)), (ck.camdrop3d, (2, 6, 3, 4, 5))])
def test_gradcheck_other_ranks(fn, shape, fast_backend):
    x, cam, alpha = inputs(shape=shape)
    f = lambda t: fn(t, cam, alpha, 0.6, 2, seed=3)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x.requires_grad_(),))


def test_gradient_is_masked_scale(backend):
    x, cam, alpha = inputs(torch.float32)
    kw = dict(drop_prob=0.8, block_size=3, normalize="sample", seed=5)
    mask = ck.camdrop_mask(x, cam, alpha, **kw)
    x.requires_grad_()
    y = ck.camdrop(x, cam, alpha, **kw)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(9)).to(DEVICE)
    y.backward(dy)
    kept = (~mask).reshape(2, -1).sum(1).tolist()
    scale = torch.tensor([mask[0].numel() / k for k in kept], dtype=torch.float32, device=DEVICE).reshape(-1, 1, 1, 1)
    assert torch.equal(x.grad, torch.where(mask, 0.0, dy * scale))


def test_no_gradient_reaches_cam_or_alpha(backend):
    x, cam, alpha = inputs(torch.float32)
    for t in (x, cam, alpha):
        t.requires_grad_()
    ck.camdrop(x, cam, alpha, 0.5, 3, seed=1).sum().backward()
    assert x.grad is not None and cam.grad is None and alpha.grad is None


def test_inplace_backward_matches_out_of_place(backend):
    x, cam, alpha = inputs(torch.float32)
    kw = dict(drop_prob=0.8, block_size=3, seed=9)
    a = x.clone().requires_grad_()
    ck.camdrop(a, cam, alpha, **kw).pow(2).sum().backward()
    b = x.clone().requires_grad_()
    h = b * 1.0
    out = ck.camdrop(h, cam, alpha, inplace=True, **kw)
    assert out is h
    out.pow(2).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_inplace_on_a_view_in_the_graph(backend):
    """Regression: inplace=True on a view of a tensor in an autograd graph raised "cannot return
    more than one Tensor"; it must give the functional call's gradients."""
    x, cam, alpha = inputs(torch.float32, shape=(2, 6, 7, 5))
    kw = dict(drop_prob=0.8, block_size=3, seed=9)
    a = x.clone().requires_grad_()
    h = a * 2.0
    ck.camdrop(h[:, 1:4], cam, alpha[:, 1:4], inplace=True, **kw)
    h.pow(2).sum().backward()
    b = x.clone().requires_grad_()
    hb = b * 2.0
    out = torch.cat([hb[:, :1], ck.camdrop(hb[:, 1:4], cam, alpha[:, 1:4], **kw), hb[:, 4:]], 1)
    out.pow(2).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_inplace_on_a_leaf_requiring_grad(backend):
    """Refused under grad mode, as torch does; allowed under torch.no_grad(), as torch allows.
    (Regression: it was refused under no_grad too.)"""
    x, cam, alpha = inputs(torch.float32)
    want = ck.camdrop(x, cam, alpha, 0.5, 3, seed=2)
    x.requires_grad_()
    with pytest.raises(RuntimeError, match="leaf"):
        ck.camdrop(x, cam, alpha, 0.5, 3, inplace=True)
    with torch.no_grad():
        out = ck.camdrop(x, cam, alpha, 0.5, 3, seed=2, inplace=True)
    assert out is x and torch.equal(x.detach(), want)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_compiled_inplace_gradients_equal_eager(compiler):
    """Regression: under torch.compile, inplace=True on an intermediate lost the mask and the scale
    in backward (every gradient was the upstream one). Device: CPU (inductor builds C++ here)."""
    torch._dynamo.reset()
    x, cam, alpha = (t.float().cpu() for t in inputs(torch.float32))
    kw = dict(drop_prob=0.6, block_size=3, seed=5, top_channels=0.5, backend="torch")

    def f(t):
        return ck.camdrop(t * 2, cam, alpha, inplace=True, **kw) + 1

    a = x.clone().requires_grad_()
    f(a).pow(2).sum().backward()
    b = x.clone().requires_grad_()
    torch.compile(f, backend=compiler, fullgraph=True)(b).pow(2).sum().backward()
    assert (a.grad == 0).any()
    assert torch.equal(a.grad == 0, b.grad == 0)  # the same elements dropped
    # (aot_eager runs eager's ops; inductor may fuse x * 2 and the pow's derivative differently)
    close = torch.equal if compiler == "aot_eager" else torch.allclose
    assert close(a.grad, b.grad), (a.grad - b.grad).abs().max()


def test_raw_inplace_op_under_autograd(backend):
    """torch.ops.camdrop_kernels.camdrop_apply_ takes part in autograd like torch's in-place ops: on
    an intermediate its gradient is the apply's; a leaf that requires grad, or a view of one, is
    refused before anything is written; an inference tensor only inside inference mode."""
    from camdrop_kernels.options import Options

    x, cam, alpha = inputs(torch.float32)
    opts = Options.get(2, 3, None, 0.5, "square", "batch", "eligible", 1.0)
    seed, rate = torch.tensor([3]), torch.tensor([0.9], dtype=torch.float64)
    slots, bits, scale = torch.ops.camdrop_kernels.camdrop_state(x, cam, alpha, seed, rate, opts.key)[:3]
    a = x.clone().requires_grad_()
    h = a * 2
    torch.ops.camdrop_kernels.camdrop_apply_(h, slots, bits, scale)
    h.pow(2).sum().backward()
    b = x.clone().requires_grad_()
    torch.ops.camdrop_kernels.camdrop_apply(b * 2, slots, bits, scale).pow(2).sum().backward()
    assert (a.grad == 0).any() and torch.equal(a.grad, b.grad)
    leaf = x.clone().requires_grad_()
    for target, words in ((leaf, "leaf"), (leaf[:], "view of a leaf")):
        before = leaf.detach().clone()
        with pytest.raises(RuntimeError, match=words):
            torch.ops.camdrop_kernels.camdrop_apply_(target, slots, bits, scale)
        assert torch.equal(leaf.detach(), before)
    with torch.inference_mode():
        frozen = x.clone()
        torch.ops.camdrop_kernels.camdrop_apply_(frozen, slots, bits, scale)
    with pytest.raises(RuntimeError, match="inference"):
        torch.ops.camdrop_kernels.camdrop_apply_(frozen, slots, bits, scale)


def test_inplace_on_a_view_of_a_leaf_is_refused_before_writing(backend):
    """Regression: the leaf's data was overwritten, then mark_dirty raised."""
    x, cam, alpha = inputs(torch.float32)
    x.requires_grad_()
    before = x.detach().clone()
    with pytest.raises(RuntimeError, match="view of a leaf"):
        ck.camdrop(x[:, :3], cam, alpha[:, :3], 1.0, 3, seed=1, inplace=True, top_pixels=1.0)
    assert torch.equal(x.detach(), before)


def test_inplace_refuses_expanded_x():
    x, cam, alpha = inputs(torch.float32)
    expanded = x[:, :1].expand(-1, x.shape[1], -1, -1)
    with pytest.raises(ValueError, match="overlapping"):
        ck.camdrop(expanded, cam, alpha, 0.5, 3, inplace=True)


def test_saved_state_is_compact(backend):
    """What autograd keeps: a bit per element of the top channels, a slot per channel, a scale per
    sample; never a full-size mask or x itself."""
    x, cam, alpha = inputs(torch.float32, shape=(4, 64, 14, 14))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        ck.camdrop(x.requires_grad_(), cam, alpha, 0.3, 3, seed=1)
    nbytes = sum(t.numel() * t.element_size() for t in saved)
    assert {t.dtype for t in saved} == {torch.int32, torch.float32}
    assert nbytes <= 4 * 64 * 4 + 4 * 8 * 7 * 4 + 4 * 4  # slots + bits (8 top channels, 7 words) + scale
    assert nbytes < x.numel() * x.element_size() / 40


def test_import_and_compiled_cpu_use_without_triton():
    """``import camdrop_kernels``, the CPU path and a compiled call work when triton cannot be
    imported (the fake kernels import nothing from triton)."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, camdrop_kernels as ck\n"
        "from camdrop_kernels import backends\n"
        "assert not backends.triton_available()\n"
        "x = torch.randn(2, 8, 6, 6)\n"
        "cam, alpha = torch.randn(2, 6, 6), torch.randn(2, 8)\n"
        "y = ck.camdrop(x, cam, alpha, 0.5, 3, seed=1)\n"
        "f = torch.compile(lambda t: ck.camdrop(t, cam, alpha, 0.5, 3, seed=1), fullgraph=True, backend='aot_eager')\n"
        "assert torch.equal(f(x), y)\n"
        "assert 'triton' not in {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None}\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]
