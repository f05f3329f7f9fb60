"""CUDA-only checks of the Triton backend: ResNet shapes against the CPU path bit for bit, more than
2**31 elements, CUDA graphs drawing fresh masks, no host sync, torch.compile, bf16 autocast, the
launch count seen by the profiler. Skipped without a GPU (benchmarks/gpu_check.sh runs them)."""
import pytest
import torch

import camdrop_kernels as ck
from camdrop_kernels import ops, state
from camdrop_kernels.options import Options

from conftest import HAS_TRITON, assert_bitwise_equal

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and triton")


def inputs(shape, dtype, channels_last=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    N, C, H, W = shape
    x = torch.randn(shape, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randn(N, H, W, generator=g), torch.randn(N, C, generator=g)


def rate(p):
    return torch.tensor(p, dtype=torch.float64)


@pytest.mark.parametrize("shape", [(32, 256, 56, 56), (64, 512, 28, 28), (16, 2048, 7, 7), (4, 64, 112, 112)])
@pytest.mark.parametrize("dtype,channels_last", [(torch.bfloat16, False), (torch.bfloat16, True),
                                                 (torch.float32, False), (torch.float16, True)])
@pytest.mark.parametrize("mode", [dict(), dict(gamma_mode="dropblock"),
                                  dict(block_shape="diamond", normalize="sample")])
def test_resnet_shapes_equal_cpu(shape, dtype, channels_last, mode):
    x, cam, alpha = inputs(shape, dtype, channels_last)
    kw = dict(drop_prob=0.2, block_size=5, seed=2**40 + 7, **mode)
    y_cpu = ck.camdrop(x, cam, alpha, **kw, backend="torch")
    y_gpu = ck.camdrop(x.cuda(), cam.cuda(), alpha.cuda(), **kw, backend="triton")
    assert y_gpu.stride() == x.stride()
    assert_bitwise_equal(y_gpu.cpu(), y_cpu)
    m_gpu = ck.camdrop_mask(x.cuda(), cam.cuda(), alpha.cuda(), **kw, backend="triton")
    assert torch.equal(m_gpu.cpu(), ck.camdrop_mask(x, cam, alpha, **kw, backend="torch"))
    xg = x.cuda().requires_grad_()
    ck.camdrop(xg, cam.cuda(), alpha.cuda(), **kw, backend="triton").backward(y_gpu)
    xc = x.clone().requires_grad_()
    ck.camdrop(xc, cam, alpha, **kw, backend="torch").backward(y_cpu)
    assert_bitwise_equal(xg.grad.cpu(), xc.grad, "gradient")


@pytest.mark.parametrize("shape", [(32, 256, 56, 56), (64, 1024, 14, 14), (64, 2048, 7, 7), (3000, 8, 7, 7)])
@pytest.mark.parametrize("normalize", ["batch", "sample"])
def test_bound_layer_bf16_cam_state_equals_cpu(shape, normalize):
    """The bound layer's case under bf16 autocast: the CAM is a bf16 map (ties at the n-th value),
    alpha float32; the whole state (slots, bits, scale, counts, rates) equals the CPU path's. The
    last shape has more samples than a forward's apply sums itself (the finish kernel serves it)."""
    x, cam, alpha = inputs(shape, torch.bfloat16)
    cam_b = ck.class_activation_map(x, alpha)  # bf16, as a bound layer builds it under autocast
    assert cam_b.dtype == torch.bfloat16
    opts = Options.get(2, 7, None, None, "square", normalize, "eligible", 1.0)
    seed, p = torch.tensor(2**40 + 3), rate(0.1)
    gpu = ops.build_state(x.cuda(), cam_b.cuda(), alpha.cuda(), seed, p, opts)
    cpu = ops.build_state(x, cam_b, alpha, seed, p, opts)
    for name, a, b in zip(("slots", "bits", "scale", "dropped", "rate"), gpu, cpu):
        assert torch.equal(a.cpu(), b), name
    y = ops.forward(x.cuda(), cam_b.cuda(), alpha.cuda(), seed, p, opts)[0]
    assert_bitwise_equal(y.cpu(), ops.forward(x, cam_b, alpha, seed, p, opts)[0])


@pytest.mark.parametrize("N,C", [(2, 16385), (1, 32769)])
def test_more_than_2_31_elements(N, C):
    """2 x 16385 x 256 x 256 (per sample below 2**31: int32 offsets from an int64 sample base) and
    1 x 32769 x 256 x 256 (one sample beyond 2**31: the int64 strided kernel); the state equals the
    CPU path's, and the far end of the output is right."""
    H = W = 256
    assert N * C * H * W > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn((N, C, H, W), device="cuda", dtype=torch.bfloat16, generator=g)
    cam = torch.randn(N, H, W, device="cuda", generator=g)
    alpha = torch.randn(N, C, device="cuda", generator=g)
    alpha[N - 1, -3:] = 100.0  # the last sample's top channels: logical offsets past 2**31
    opts = Options.get(2, 5, None, 3, "square", "batch", "eligible", 1.0)
    seed, p = torch.tensor(123), rate(0.5)
    gpu = ops.build_state(x, cam, alpha, seed, p, opts)
    x_cpu_shape = torch.empty((), dtype=torch.bfloat16).expand(N, C, H, W)  # the state never reads x
    cpu = ops.build_state(x_cpu_shape, cam.cpu(), alpha.cpu(), seed, p, opts)
    for name, a, b in zip(("slots", "bits", "scale", "dropped", "rate"), gpu, cpu):
        assert torch.equal(a.cpu(), b), name
    slots, bits, scale = gpu[:3]
    assert torch.equal(slots[N - 1, -3:].cpu(), torch.tensor([0, 1, 2], dtype=torch.int32))
    y = ops.forward(x, cam, alpha, seed, p, opts)[0]
    planes = state.unpack_bits(bits, H * W).reshape(N, 3, H, W)
    assert planes[N - 1].any()
    tail = x[N - 1, -3:].float() * scale[N - 1]
    assert torch.equal(y[N - 1, -3:], torch.where(planes[N - 1], 0.0, tail).to(torch.bfloat16))
    assert torch.equal(y[0, :2], (x[0, :2].float() * scale[0]).to(torch.bfloat16))


def test_no_host_sync_forward_backward():
    x, cam, alpha = (t.cuda() for t in inputs((8, 64, 28, 28), torch.bfloat16))
    x.requires_grad_()
    for kw in (dict(), dict(gamma_mode="dropblock", normalize="sample")):
        ck.camdrop(x, cam, alpha, 0.2, 5, **kw).sum().backward()  # warm up (compile) outside the check
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for kw in (dict(), dict(gamma_mode="dropblock", normalize="sample")):
            y = ck.camdrop(x, cam, alpha, 0.2, 5, **kw)
            y.backward(torch.ones_like(y))
            ck.camdrop(x.detach(), cam, alpha, 0.2, 5, seed=3, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cuda_graph_replays_draw_fresh_masks():
    x, cam, alpha = (t.cuda() for t in inputs((8, 64, 28, 28), torch.bfloat16))
    kw = dict(drop_prob=0.5, block_size=3, top_pixels=1.0, gamma_mode="dropblock", gamma_scale=3.0)
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
        ratio = y.float()[~dropped] / x.float()[~dropped]
        assert ratio.min() > 1.0 and (ratio.max() - ratio.min()) < 0.02  # one scale (bf16 rounding)
    # Eager calls after the replays still work (and give the same mask for the same seed).
    assert torch.equal(ck.camdrop(x, cam, alpha, **kw, seed=5), ck.camdrop(x, cam, alpha, **kw, seed=5))


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


class _Net(torch.nn.Module):
    """conv -> CamDrop -> ReLU -> global pooling -> linear (the layer bound to it, or self-guided)."""

    def __init__(self, guidance):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 10)
        self.drop = ck.CamDrop2d(0.0, 3, guidance=guidance, classifier=None if guidance == "self" else self.fc)

    def forward(self, x):
        return self.fc(torch.relu(self.drop(self.conv(x))).mean((2, 3)))


def _step_all(compiled, model, guidance, steps=5):
    """A rate schedule; returns the share the layer dropped at each step."""
    labels = torch.randint(0, 10, (8,), device="cuda")
    shares = []
    for step in range(steps):
        ck.set_drop_prob(model, 0.1 + 0.05 * step)
        x = torch.randn(8, 3, 16, 16, device="cuda")
        if guidance == "classifier":
            with ck.targets(model, labels):
                out = compiled(x)
        else:
            out = compiled(x)
        out.sum().backward()
        shares.append(float(model.drop.last_dropped_fraction))  # (read before the next replay)
    return shares


def test_reduce_overhead_self_guided_and_bound_models_compile_once_and_drop():
    """torch.compile(mode="reduce-overhead") (CUDA graphs) of a model without a targets block
    (self guidance: its statistics are the graph's outputs, valid until the next replay) and of a
    classifier-bound one inside targets blocks (written in place into the block's tensors): one
    graph each over a rate schedule, and every step drops."""
    from torch._dynamo.utils import counters

    for guidance in ("self", "classifier"):
        torch._dynamo.reset()
        counters.clear()
        torch.manual_seed(0)
        model = _Net(guidance).cuda().train()
        compiled = torch.compile(model, mode="reduce-overhead")
        shares = _step_all(compiled, model, guidance)
        assert all(share > 0 for share in shares), (guidance, shares)
        assert counters["stats"]["unique_graphs"] == 1, (guidance, dict(counters["stats"]))
    torch._dynamo.reset()


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


def test_two_kernels_forward_one_backward_in_the_profiler():
    """On the device: the forward runs the state and apply kernels and nothing else; the backward one
    apply (autograd's own zero fills for the statistics outputs aside, see test_triton_paths)."""
    x, cam, alpha = (t.cuda() for t in inputs((16, 256, 28, 28), torch.bfloat16))
    x.requires_grad_()
    dy = torch.randn_like(x)
    ck.camdrop(x, cam, alpha, 0.1, 7).backward(dy)  # compile and cache outside the count
    torch.cuda.synchronize()

    def kernels(fn):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            fn()
            torch.cuda.synchronize()
        return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]

    y = None

    def forward():
        nonlocal y
        y = ck.camdrop(x, cam, alpha, 0.1, 7)

    names = kernels(forward)
    assert len(names) == 2 and "state_kernel" in names[0] and "apply" in names[1], names
    names = kernels(lambda: y.backward(dy))
    ours = [n for n in names if "apply" in n]
    assert len(ours) == 1, names


def test_saved_state_is_compact():
    x, cam, alpha = (t.cuda() for t in inputs((64, 256, 56, 56), torch.bfloat16))
    opts = Options.get(2, 7, None, None, "square", "batch", "dropblock", 1.0)
    slots, bits, scale, _, _ = ops.build_state(x, cam, alpha, torch.tensor(1), rate(0.1), opts)
    geo = opts.geometry(256, (56, 56))
    assert tuple(bits.shape) == (64, geo.top_channels, geo.words)
    assert bits.numel() * 32 <= 64 * geo.top_channels * (56 * 56 + 31)  # one bit per element (+ padding)
    assert tuple(slots.shape) == (64, 256) and tuple(scale.shape) == (64,)


def test_later_launches_skip_tritons_binding(monkeypatch):
    """After a plan's first launch, launches call the compiled kernel's launcher directly (the fast
    path, never reached on a card before the HookChain fix), with the same result; a launch hook
    (a profiler) sends them back through kernel[grid], which runs the hook."""
    from triton import knobs

    from camdrop_kernels.triton_backend import launch

    x, cam, alpha = (t.cuda() for t in inputs((4, 64, 28, 28), torch.bfloat16))
    kw = dict(drop_prob=0.3, block_size=5, seed=11)
    first = ck.camdrop(x, cam, alpha, **kw)
    slow = launch.Plan._launch_through_triton
    calls = []
    monkeypatch.setattr(launch.Plan, "_launch_through_triton", lambda self, *a: calls.append(self.name) or slow(self, *a))
    assert_bitwise_equal(ck.camdrop(x, cam, alpha, **kw), first)
    assert calls == []
    seen = []
    hook = lambda *a: seen.append(1)  # noqa: E731
    chain = knobs.runtime.launch_enter_hook
    if hasattr(chain, "add"):
        chain.add(hook)
    else:
        knobs.runtime.launch_enter_hook = hook
    try:
        assert_bitwise_equal(ck.camdrop(x, cam, alpha, **kw), first)
    finally:
        if hasattr(chain, "remove"):
            chain.remove(hook)
        else:
            knobs.runtime.launch_enter_hook = None
    assert calls == ["state", "apply_nchw"] and len(seen) == 2
