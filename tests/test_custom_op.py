"""The registered ops: schema/fake/autograd checks, and torch.compile(fullgraph=True) with no graph break."""
import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels import ops, reference

from conftest import DEVICE


def op_args(backend, dtype=torch.float32, layout="contiguous"):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 6, 7, generator=g, dtype=dtype).to(DEVICE)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    cam = torch.randn(2, 6, 7, generator=g).to(DEVICE)
    alpha = torch.randn(2, 8, generator=g).to(DEVICE)
    seed = torch.tensor(12345, device=DEVICE)
    return x, cam, alpha, seed, 0.7, 3, 5, 2, "square", "batch", "eligible", 1.0, backend


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(dtype, layout, backend):
    args = op_args(backend, dtype, layout)
    x = args[0].clone().requires_grad_()
    torch.library.opcheck(ops.camdrop_op, (x,) + args[1:])
    y, chan, mask, scale, dropped = ops.camdrop_op(*args)
    assert dropped.dtype == torch.int64 and dropped.shape == (2,)
    dense = ck.camdrop_mask(*args[:3], 0.7, 3, top_pixels=5, top_channels=2, gamma_mode="eligible", seed=12345,
                            backend=backend)
    assert torch.equal(dropped.cpu(), dense.reshape(2, -1).sum(1).cpu())
    torch.library.opcheck(ops.camdrop_backward_op, (torch.randn_like(args[0]), chan, mask, scale, backend))
    torch.library.opcheck(ops.camdrop_inplace_op, (args[0].clone(),) + args[1:],
                          test_utils=("test_schema", "test_faketensor"))


def test_compile_fullgraph_forward_and_backward(backend):
    torch._dynamo.reset()
    x, cam, alpha = op_args(backend)[:3]
    kw = dict(drop_prob=0.7, block_size=3, gamma_mode="eligible", seed=99, backend=backend)

    def step(t):
        return (ck.camdrop(t * 2.0, cam, alpha, **kw) ** 2).sum()

    compiled = torch.compile(step, fullgraph=True)
    a = x.clone().requires_grad_()
    compiled(a).backward()
    b = x.clone().requires_grad_()
    (reference.camdrop(b * 2.0, cam, alpha, **{k: v for k, v in kw.items() if k != "backend"}) ** 2).sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_compile_fullgraph_module_with_random_seed(backend):
    torch._dynamo.reset()
    x, cam, alpha = op_args(backend)[:3]
    layer = ck.CamDrop2d(0.7, 3, top_pixels=1.0, gamma_scale=3.0, backend=backend)  # gamma = 0.49
    compiled = torch.compile(layer, fullgraph=True)
    y1, y2 = compiled(x, cam, alpha), compiled(x, cam, alpha)
    assert (y1 == 0).any() and not torch.equal(y1, y2), "each call draws a fresh mask"
