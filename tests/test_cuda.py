"""CUDA-only checks of the Triton backend: large shapes against the CPU path, > 2**31 elements,
CUDA graphs, torch.compile and autocast. Skipped without a GPU (run benchmarks/gpu_check.sh there)."""
import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels import ops, torch_backend
from camdrop_kernels.config import CamDropConfig

from conftest import HAS_TRITON, assert_bitwise_equal

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton")


def inputs(shape, dtype, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    x = torch.randn(shape, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randn(N, H, W, generator=g), torch.randn(N, C, generator=g)


@pytest.mark.parametrize("shape", [(32, 256, 56, 56), (64, 512, 28, 28), (16, 2048, 7, 7), (4, 64, 112, 112)])
@pytest.mark.parametrize("dtype,channels_last", [(torch.bfloat16, False), (torch.bfloat16, True),
                                                 (torch.float32, False), (torch.float16, True)])
@pytest.mark.parametrize("mode", [dict(), dict(gamma_mode="eligible", block_shape="diamond", normalize="sample")])
def test_large_shapes_equal_cpu(shape, dtype, channels_last, mode):
    x, cam, alpha = inputs(shape, dtype, channels_last)
    kw = dict(drop_prob=0.2, block_size=5, seed=2**40 + 7, **mode)
    y_cpu = ck.camdrop(x, cam, alpha, **kw, backend="torch")
    y_gpu = ck.camdrop(x.cuda(), cam.cuda(), alpha.cuda(), **kw, backend="triton")
    assert y_gpu.stride() == x.stride()
    assert_bitwise_equal(y_gpu.cpu(), y_cpu)
    m_gpu = ck.camdrop_mask(x.cuda(), cam.cuda(), alpha.cuda(), **kw, backend="triton")
    assert torch.equal(m_gpu.cpu(), ck.camdrop_mask(x, cam, alpha, **kw, backend="torch"))


def test_more_than_2_31_elements():
    N, C, H, W = 2, 16385, 256, 256  # 2 * 16385 * 65536 = 2**31 + 2**17 elements (4 GiB in bf16)
    assert N * C * H * W > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((N, C, H, W), device="cuda", dtype=torch.bfloat16, generator=g)
    cam = torch.randn(N, H, W, device="cuda", generator=g)
    alpha = torch.randn(N, C, device="cuda", generator=g)
    alpha[1, -3:] = 100.0  # sample 1's top channels: logical offsets past 2**31
    kw = dict(drop_prob=0.5, block_size=5, top_channels=3, gamma_mode="eligible", seed=123)
    cfg = CamDropConfig.build((N, C, H, W), 0.5, 5, None, 3, "square", "batch", "eligible", 1.0)
    seed = torch.tensor(123)
    chan_cpu, dropped_cpu, _ = torch_backend.build_mask(cam.cpu(), alpha.cpu(), seed, cfg)
    y, slot, bits, scale, dropped = ops.camdrop_op(x, cam, alpha, seed.cuda(), 0.5, 5, cfg.top_pixels, 3, "square",
                                         "batch", "eligible", 1.0, "triton")
    assert torch.equal(chan_cpu[1], torch.tensor([C - 3, C - 2, C - 1]))
    shifts = torch.arange(32, device="cuda", dtype=torch.int32)
    planes = ((bits[..., None] >> shifts) & 1).reshape(N, 3, -1)[..., : H * W].reshape(N, 3, H, W) != 0
    assert torch.equal(planes.cpu(), dropped_cpu) and dropped_cpu[1].any()
    assert torch.equal(dropped.cpu(), dropped_cpu.reshape(N, -1).sum(1))
    kept = N * C * H * W - int(dropped_cpu.sum())
    assert float(scale[0]) == torch.tensor(N * C * H * W / kept, dtype=torch.float32).item()
    # The far end of the tensor: sample 1's last channels, written with int64 offsets.
    tail = x[1, -3:].float() * scale[1]
    want = torch.where(planes[1], 0.0, tail).to(torch.bfloat16)
    assert torch.equal(y[1, -3:], want)
    assert torch.equal(y[0, :2], (x[0, :2].float() * scale[0]).to(torch.bfloat16))


def test_no_host_sync_on_the_hot_path():
    x, cam, alpha = (t.cuda() for t in inputs((8, 64, 28, 28), torch.bfloat16))
    x.requires_grad_()
    ck.camdrop(x, cam, alpha, 0.2, 5).sum().backward()  # warm up (compile) outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y = ck.camdrop(x, cam, alpha, 0.2, 5)
        y.backward(torch.ones_like(y))
        ck.camdrop(x.detach(), cam, alpha, 0.2, 5, seed=3)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_replays_draw_fresh_masks():
    x, cam, alpha = (t.cuda() for t in inputs((8, 64, 28, 28), torch.bfloat16))
    kw = dict(drop_prob=0.5, block_size=3, top_pixels=1.0, gamma_scale=3.0)  # gamma = 0.5*3*784/(9*676)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            ck.camdrop(x, cam, alpha, **kw)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = ck.camdrop(x, cam, alpha, **kw)
    results = []
    for _ in range(3):
        graph.replay()
        results.append(out.clone())
    torch.cuda.synchronize()
    assert not torch.equal(results[0], results[1]) and not torch.equal(results[1], results[2])
    for y in results:
        dropped = y == 0
        assert dropped.any()
        ratio = (y.float()[~dropped] / x.float()[~dropped])
        assert ratio.min() > 1.0 and (ratio.max() - ratio.min()) < 0.02  # one scale (bf16 rounding)


def test_compile_fullgraph_forward_backward_cuda():
    torch._dynamo.reset()
    x, cam, alpha = (t.cuda() for t in inputs((8, 64, 28, 28), torch.float32))
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).cuda()
    kw = dict(drop_prob=0.3, block_size=5, gamma_mode="eligible", seed=17)

    def step(t):
        return ck.camdrop(conv(t), cam, alpha, **kw).square().mean()

    compiled = torch.compile(step, fullgraph=True)
    a = x.clone().requires_grad_()
    compiled(a).backward()
    ga, gw = a.grad.clone(), conv.weight.grad.clone()
    conv.weight.grad = None
    b = x.clone().requires_grad_()
    step(b).backward()
    torch.testing.assert_close(ga, b.grad)
    torch.testing.assert_close(gw, conv.weight.grad)


def test_bf16_under_autocast():
    x, cam, alpha = (t.cuda() for t in inputs((8, 64, 28, 28), torch.float32))
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        h = conv(x)
        y = ck.camdrop(h, cam, alpha, 0.3, 5, gamma_mode="eligible", seed=4)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    assert torch.equal(y, ck.camdrop(h, cam, alpha, 0.3, 5, gamma_mode="eligible", seed=4, backend="triton"))
    assert_bitwise_equal(y.cpu(), ck.camdrop(h.cpu(), cam.cpu(), alpha.cpu(), 0.3, 5, gamma_mode="eligible",
                                             seed=4))
    y.float().sum().backward()


def test_triton_saved_state_is_compact():
    from camdrop_kernels import triton_backend

    x, cam, alpha = (t.cuda() for t in inputs((64, 256, 56, 56), torch.bfloat16))
    cfg = CamDropConfig.build(tuple(x.shape), 0.1, 7, None, None, "square", "batch", "dropblock", 1.0)
    _, slot, bits, scale, _ = ops.camdrop_op(x, cam, alpha, torch.tensor(1, device="cuda"), 0.1, 7, cfg.top_pixels,
                                         cfg.top_channels, "square", "batch", "dropblock", 1.0, "triton")
    mask_bits = bits.numel() * 32
    assert mask_bits <= cfg.N * cfg.top_channels * (cfg.H * cfg.W + 31)  # one bit per element (+ padding)
    assert triton_backend.mask_spec(cfg)[0] == tuple(bits.shape)
