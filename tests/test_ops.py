"""The registered ops: schema/fake checks (opcheck), meta tensors, and torch.compile: fullgraph,
dynamic shapes, and a drop-rate schedule that never recompiles."""
import warnings

import pytest
import torch
import torch._dynamo.testing

import camdrop_kernels as ck
from camdrop_kernels import ops, reference
from camdrop_kernels.options import Options

from conftest import DEVICE


def op_args(rank=2, dtype=torch.float32, layout="contiguous", mode="eligible"):
    g = torch.Generator().manual_seed(1)
    S = {1: (13,), 2: (6, 7), 3: (3, 4, 5)}[rank]
    x = torch.randn(2, 8, *S, generator=g, dtype=dtype).to(DEVICE)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    cam = torch.randn(2, *S, generator=g).to(DEVICE)
    alpha = torch.randn(2, 8, generator=g).to(DEVICE)
    opts = Options.get(rank, 3, 5, 2, "square", "batch", mode, 1.0)
    return x, cam, alpha, torch.tensor(12345), torch.tensor(0.7, dtype=torch.float64), opts.key


@pytest.mark.parametrize("rank,layout", [(1, "contiguous"), (2, "contiguous"), (2, "channels_last"), (3, "contiguous")])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_opcheck(rank, layout, dtype, backend):
    args = op_args(rank, dtype, layout)
    torch.library.opcheck(ops.camdrop_state, args)
    slots, bits, scale, dropped, rate = ops.camdrop_state(*args)
    dense = ck.camdrop_mask(*args[:3], 0.7, 3, top_pixels=5, top_channels=2, seed=12345) if rank == 2 else None
    if dense is not None:
        assert torch.equal(dropped.cpu(), dense.reshape(2, -1).sum(1).cpu())
    x = args[0]
    torch.library.opcheck(ops.camdrop_apply, (x, slots, bits, scale))
    torch.library.opcheck(ops.camdrop_apply_, (x.clone(), slots, bits, scale))


def test_meta_tensors_give_shapes():
    """Regression: eager calls on meta tensors failed in aten::nonzero."""
    x = torch.empty(4, 16, 9, 9, device="meta")
    cam, alpha = torch.empty(4, 9, 9, device="meta"), torch.empty(4, 16, device="meta")
    y = ck.camdrop(x, cam, alpha, 0.3, 3)
    assert y.shape == x.shape and y.device.type == "meta"
    assert ck.camdrop_mask(x, cam, alpha, 0.3, 3).shape == x.shape
    layer = ck.CamDrop3d(0.2, 3).train()
    x3 = torch.empty(2, 8, 3, 5, 5, device="meta")
    assert layer(x3, torch.empty(2, 3, 5, 5, device="meta"), torch.empty(2, 8, device="meta")).shape == x3.shape


def test_compile_fullgraph_forward_and_backward(backend):
    torch._dynamo.reset()
    x, cam, alpha = op_args()[:3]
    kw = dict(drop_prob=0.7, block_size=3, seed=99)

    def step(t):
        return (ck.camdrop(t * 2.0, cam, alpha, **kw) ** 2).sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    a = x.clone().requires_grad_()
    compiled(a).backward()
    b = x.clone().requires_grad_()
    (reference.camdrop(b * 2.0, cam.cpu(), alpha.cpu(), **kw) ** 2).sum().backward() if DEVICE == "cpu" else None
    if DEVICE == "cpu":
        assert torch.equal(a.grad, b.grad)


def test_compile_dynamic_shapes():
    """Regression: compile(dynamic=True, fullgraph=True) failed in validation, and mark_dynamic on
    the batch failed (sizes were forced to ints)."""
    torch._dynamo.reset()
    layer = ck.CamDrop2d(0.3, 3).train()

    def step(t, cam, alpha):
        return layer(t, cam, alpha).sum()

    dynamic = torch.compile(step, fullgraph=True, dynamic=True, backend="aot_eager")
    for n, c, h in ((2, 8, 6), (3, 16, 7), (5, 24, 9)):
        x = torch.randn(n, c, h, h, requires_grad=True)
        dynamic(x, torch.randn(n, h, h), torch.randn(n, c)).backward()
        assert x.grad.shape == x.shape
    torch._dynamo.reset()
    marked = torch.compile(step, fullgraph=True, backend="aot_eager")
    for n in (2, 3, 5):
        args = (torch.randn(n, 8, 6, 6), torch.randn(n, 6, 6), torch.randn(n, 8))
        for t in args:
            torch._dynamo.mark_dynamic(t, 0)
        assert marked(*args).isfinite()


class Net(torch.nn.Module):
    """conv -> bound CamDrop2d -> global average pooling -> linear (the CAM is exact here)."""

    def __init__(self, classes=10):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, classes)
        self.drop = ck.CamDrop2d(0.0, 3, classifier=self.fc)

    def forward(self, x):
        return self.fc(self.drop(self.conv(x)).mean((2, 3)))


def test_schedule_changes_the_rate_without_recompiling():
    """Regression: set_drop_prob every step made a fullgraph compiled model fail on the second
    step (and recompile per value without fullgraph). The rate is a tensor buffer now."""
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    torch.manual_seed(0)
    model = Net().train()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    g = torch.Generator().manual_seed(0)
    shares = []
    for step in range(6):
        ck.set_drop_prob(model, ck.linear_ramp(step, 5, 0.3))
        x, y = torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
        with ck.targets(compiled, y):
            torch.nn.functional.cross_entropy(compiled(x), y).backward()
        shares.append(float(model.drop.last_dropped_fraction))
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert shares[0] == 0.0 and shares[-1] > 0.0


def test_fake_tensors_and_subclasses_go_through_the_dispatcher():
    """Review finding: the eager fast path handed FakeTensors and wrapper subclasses (their DLPack
    export has no data) to the C code, which crashed. They take the dispatcher now."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.two_tensor import TwoTensor

    with FakeTensorMode():
        x, cam, alpha = torch.randn(2, 8, 6, 6), torch.randn(2, 6, 6), torch.randn(2, 8)
        assert ck.camdrop(x, cam, alpha, 0.1, 3).shape == x.shape
        assert ck.camdrop_mask(x, cam, alpha, 0.1, 3).shape == x.shape
        assert ck.CamDrop2d(0.1, 3)(x, cam, alpha).shape == x.shape
    g = torch.Generator().manual_seed(0)
    a = torch.randn(2, 8, 6, 6, generator=g)
    cam, alpha = torch.randn(2, 6, 6, generator=g), torch.randn(2, 8, generator=g)
    y = ck.camdrop(TwoTensor(a, a.clone()), cam, alpha, 0.3, 3, seed=1)
    assert isinstance(y, TwoTensor) and torch.equal(y.a, ck.camdrop(a, cam, alpha, 0.3, 3, seed=1))


def test_the_registered_ops_are_differentiable():
    """Review finding: torch.ops.camdrop_kernels.camdrop left x.grad None (a warning only)."""
    x, cam, alpha, seed, p, key = op_args()
    x = x.detach().requires_grad_()
    y, slots, bits, scale, dropped, rate = torch.ops.camdrop_kernels.camdrop(x, cam, alpha, seed, p, key)
    y.backward(torch.ones_like(y))
    want = torch.ops.camdrop_kernels.camdrop_apply(torch.ones_like(y), slots, bits, scale)
    assert torch.equal(x.grad, want)
    x.grad = None
    torch.ops.camdrop_kernels.camdrop_apply(x, slots, bits, scale).sum().backward()
    assert torch.equal(x.grad, want)


def test_inplace_without_autograd_bumps_the_version_counter():
    """Review finding: writing in place outside the grad path did not bump x's version, so a tensor
    autograd had saved changed silently and the gradients came out wrong."""
    a = torch.randn(2, 8, 6, 6, requires_grad=True)
    t = a.exp()  # exp saves its output for backward
    cam, alpha = torch.randn(2, 6, 6), torch.randn(2, 8)
    ck.camdrop(t.detach(), cam, alpha, 0.5, 3, seed=7, inplace=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        t.sum().backward()
    inference = torch.randn(2, 8, 6, 6)
    with torch.inference_mode():
        inference = torch.randn(2, 8, 6, 6)
    with pytest.raises(RuntimeError, match="inference"):
        ck.camdrop(inference, cam, alpha, 0.5, 3, inplace=True)


def test_compile_in_a_fresh_process():
    """Review finding: compiling the functional API failed in a fresh process (a lazily computed
    options key took a lock dynamo cannot trace) and with dynamic=True (math.isfinite on a
    symbolic float); the suite passed only because earlier tests had warmed the caches."""
    import subprocess
    import sys

    code = (
        "import torch, camdrop_kernels as ck\n"
        "x, cam, al = torch.randn(2, 8, 6, 6), torch.randn(2, 6, 6), torch.randn(2, 8)\n"
        "f = torch.compile(lambda t: ck.camdrop(t, cam, al, 0.3, 3, gamma_scale=1.5, top_pixels=0.5, seed=1), "
        "fullgraph=True, backend='aot_eager')\n"
        "y = f(x)\n"
        "g = torch.compile(lambda t, p: ck.camdrop(t, cam, al, p, 3, seed=1), fullgraph=True, dynamic=True, "
        "backend='aot_eager')\n"
        "z = g(x, 0.3)\n"
        "assert torch.equal(y, ck.camdrop(x, cam, al, 0.3, 3, gamma_scale=1.5, top_pixels=0.5, seed=1))\n"
        "assert torch.equal(z, ck.camdrop(x, cam, al, 0.3, 3, seed=1))\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-3000:]


def test_transforms_are_refused_plainly():
    x, cam, alpha = torch.randn(3, 2, 8, 6, 6), torch.randn(3, 2, 6, 6), torch.randn(3, 2, 8)
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        torch.vmap(lambda a, c, al: ck.camdrop(a, c, al, 0.3, 3))(x, cam, alpha)


def test_the_profiler_sees_the_ops():
    """Eager calls skip the dispatcher hop for speed, except while the profiler records: a user
    profiling a training step sees camdrop's ops and their time."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(2, 8, 6, 6, requires_grad=True)
    cam, alpha = torch.randn(2, 6, 6), torch.randn(2, 8)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        ck.camdrop(x, cam, alpha, 0.3, 3, seed=1).sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert {"camdrop_kernels::camdrop", "camdrop_kernels::camdrop_apply"} <= names, names


def test_check_map_size_op_warns_eager_and_fake_alike():
    """The op a compiled layer calls to warn about a map too small for its block: opcheck'd, the
    same message as the layer's eager check, silent at a large map, and checked input."""
    key = Options.get(2, 5, None, None, "square", "batch", "eligible", 1.0).key
    small = torch.randn(2, 8, 6, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (opcheck calls it several ways; each warns)
        torch.library.opcheck(ops.check_map_size, (small, key, "CamDrop2d"))
    with pytest.warns(UserWarning, match=r"CamDrop2d \(block_size=5\) on a 6x6 map: only 4 of its 36 pixels"):
        ops.check_map_size(small, key, "CamDrop2d")
    with pytest.warns(UserWarning, match="on a 6x6 map"):
        ops.check_map_size(torch.empty(2, 8, 6, 6, device="meta"), key, "CamDrop2d")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ops.check_map_size(torch.randn(2, 8, 14, 14), key, "CamDrop2d")
        chosen = Options.get(2, 5, 1.0, None, "square", "batch", "eligible", 1.0).key  # a chosen top_pixels
        ops.check_map_size(small, chosen, "CamDrop2d")
    with pytest.raises(ValueError, match="2 spatial axes"):
        ops.check_map_size(torch.randn(2, 8, 6), key, "CamDrop2d")
    with pytest.raises(ValueError, match="not a valid Options.key"):
        ops.check_map_size(small, "2|5|bogus", "CamDrop2d")


@pytest.mark.parametrize("dynamic", [False, True])
def test_a_compiled_layer_warns_about_a_map_too_small_once_per_compilation(dynamic):
    """Under torch.compile the layer's Python cannot warn without breaking the graph: the warning
    comes from the check op's fake kernel while the graph is traced (fullgraph, static and dynamic
    shapes), later steps are silent (the compiled graph dropped the call), and a rate schedule does
    not recompile for it."""
    torch._dynamo.reset()
    layer = ck.CamDrop2d(0.0, 5, guidance="self").train()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(layer, backend=counter, fullgraph=True, dynamic=dynamic)
    counts = []
    for step, rate in enumerate((0.1, 0.2, 0.3, 0.4)):
        ck.set_drop_prob(layer, rate)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled(torch.randn(2, 8, 6, 6, requires_grad=True)).sum().backward()
        mine = [w for w in caught if "can centre a whole block" in str(w.message)]
        counts.append(len(mine))
        assert all(w.filename == __file__ for w in mine)  # (the user's line, not torch's or dynamo's)
    assert counts == [1, 0, 0, 0], counts
    assert counter.frame_count == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch._dynamo.reset()
        big = torch.compile(ck.CamDrop2d(0.1, 5, guidance="self").train(), backend="aot_eager", fullgraph=True,
                            dynamic=dynamic)
        big(torch.randn(2, 8, 14, 14))
