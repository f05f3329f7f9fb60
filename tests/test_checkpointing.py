"""Activation checkpointing: a forward recomputed during backward gets its original targets, so
gradients equal those without checkpointing bit for bit (eager, torch.utils.checkpoint reentrant
and not, timm's set_grad_checkpointing, accumulation, torch.compile); genuinely new forwards
without targets still fail, and unrecoverable recomputations fail with advice."""
import copy
import gc
import shutil

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

import camdrop_kernels as ck
from camdrop_kernels import guide as camdrop_guide

CLASSES = 5


@pytest.fixture(autouse=True)
def _free_compiled_graphs():
    """Drop dynamo's caches after each test: compiled graphs left alive make the rest of a long
    pytest process slower (a larger heap for the garbage collector to walk)."""
    yield
    torch._dynamo.reset()


class Block(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class Net(nn.Module):
    """A small CNN that can checkpoint each block: ``checkpointing`` None, "reentrant",
    "non_reentrant", or "no_rng" (non-reentrant without preserving the random state)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(Block(3, 8), Block(8, 16, 2), Block(16, 16), Block(16, 32, 2), Block(32, 32))
        self.fc = nn.Linear(32, CLASSES)
        self.checkpointing = None

    def forward(self, x):
        for block in self.features:
            if self.checkpointing is None:
                x = block(x)
            else:
                x = checkpoint(block, x, use_reentrant=self.checkpointing == "reentrant",
                               preserve_rng_state=self.checkpointing != "no_rng")
        return self.fc(x.mean((2, 3)))


def make_net(**options):
    torch.manual_seed(0)
    return ck.convert(Net(), 0.3, block_size=3, **options).train()


def batch(n=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def step(model, run, x, targets, loss_targets=None, seed=11):
    """One forward (targets block around it only) and backward; returns what it produced."""
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()  # reentrant checkpointing needs an input that requires grad
    torch.manual_seed(seed)
    with ck.targets(model, targets):
        out = run(x)
    y = targets if loss_targets is None else loss_targets
    loss = F.cross_entropy(out, y)
    loss.backward()
    return dict(loss=loss.detach(), x_grad=x.grad, grads=[p.grad.clone() for p in model.parameters()],
                dropped=[layer.last_dropped.clone() for layer in ck.camdrop_layers(model)])


def assert_same(a, b):
    assert torch.equal(a["loss"], b["loss"])
    assert torch.equal(a["x_grad"], b["x_grad"])
    assert all(torch.equal(g, h) for g, h in zip(a["grads"], b["grads"]))
    assert all(torch.equal(g, h) for g, h in zip(a["dropped"], b["dropped"]))
    assert any(int(d.sum()) > 0 for d in a["dropped"]), "the case must drop something"


@pytest.mark.parametrize("mode", ["non_reentrant", "reentrant"])
@pytest.mark.parametrize("soft", [False, True])
def test_gradients_equal_with_and_without_checkpointing(mode, soft):
    x, y = batch()
    targets = F.one_hot(y, CLASSES).float() * 0.8 + 0.04 if soft else y
    plain, ckpt = make_net(), make_net()
    ckpt.checkpointing = mode
    assert_same(step(plain, plain, x, targets, y), step(ckpt, ckpt, x, targets, y))
    # The recomputation left no trace: a new forward without targets still fails.
    with pytest.raises(RuntimeError, match="no targets"):
        ckpt(x.clone().requires_grad_())


def test_skipped_forwards_are_skipped_again_when_recomputed():
    x, y = batch()
    plain, ckpt = make_net(missing_targets="skip"), make_net(missing_targets="skip")
    ckpt.checkpointing = "non_reentrant"
    results = []
    for model in (plain, ckpt):
        torch.manual_seed(3)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        results.append([p.grad for p in model.parameters()])
    assert all(torch.equal(g, h) for g, h in zip(*results))
    assert all(float(layer.last_dropped_fraction) == 0.0 for layer in ck.camdrop_layers(ckpt))


def test_accumulation_with_the_first_graph_still_alive():
    """Two micro-batches forwarded before one backward: the first one's recomputation runs after the
    second forward, and still gets the first one's targets."""
    (x1, y1), (x2, y2) = batch(seed=1), batch(seed=2)
    results = []
    for mode in (None, "non_reentrant", "reentrant"):
        model = make_net()
        model.checkpointing = mode
        torch.manual_seed(5)
        losses = []
        for x, y in ((x1, y1), (x2, y2)):
            with ck.targets(model, y):
                losses.append(F.cross_entropy(model(x.clone().requires_grad_()), y) / 2)
        (losses[0] + losses[1]).backward()
        results.append([p.grad for p in model.parameters()])
    for other in results[1:]:
        assert all(torch.equal(g, h) for g, h in zip(results[0], other))


def test_backward_inside_the_targets_block_works_too():
    x, y = batch()
    plain, ckpt = make_net(), make_net()
    ckpt.checkpointing = "non_reentrant"
    grads = []
    for model in (plain, ckpt):
        torch.manual_seed(2)
        with ck.targets(model, y):
            F.cross_entropy(model(x), y).backward()
        grads.append([p.grad for p in model.parameters()])
    assert all(torch.equal(g, h) for g, h in zip(*grads))


@pytest.mark.parametrize("reentrant", [False, True])
def test_timm_set_grad_checkpointing(reentrant):
    timm = pytest.importorskip("timm")
    from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt

    torch.manual_seed(0)
    base = ck.convert_resnet(timm.create_model("resnet18", num_classes=CLASSES), drop_prob=0.3).train()
    plain, ckpt = copy.deepcopy(base), copy.deepcopy(base)
    ckpt.set_grad_checkpointing(True)
    x, y = batch(n=2, size=32)
    before = use_reentrant_ckpt()
    set_reentrant_ckpt(reentrant)
    try:
        assert_same(step(plain, plain, x, y), step(ckpt, ckpt, x, y))
    finally:
        set_reentrant_ckpt(before)


@pytest.mark.parametrize("mode", ["non_reentrant", "reentrant"])
def test_compiled_checkpointing_matches_eager(mode):
    """torch.compile traces the checkpointed regions (the recomputation happens in the compiled
    backward, from the targets the graph took as an input): gradients equal eager ones."""
    x, y = batch()
    eager = make_net()
    expected = step(eager, eager, x, y)
    model = make_net()
    model.checkpointing = mode
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    assert_same(expected, step(model, compiled, x, y))
    # Statistics are written in place under torch.compile (a checkpointed region may not assign
    # attributes): they are those of this batch.
    fractions = [float(layer.last_dropped_fraction) for layer in ck.camdrop_layers(model)]
    assert fractions == [float(layer.last_dropped_fraction) for layer in ck.camdrop_layers(eager)]
    # A second batch size re-sizes the statistics (targets does it before the forward).
    x3, y3 = batch(n=3, seed=4)
    step(model, compiled, x3, y3)
    assert all(layer.last_dropped.shape == (3,) for layer in ck.camdrop_layers(model))
    assert counter.frame_count == 2


def test_compiled_checkpointed_self_guidance_needs_the_targets_block_for_one_graph():
    """Self guidance reads no labels, but under torch.compile a checkpointed region may not assign
    attributes: inside a targets block (which sizes the statistics) the whole model is one graph
    and equals eager; without one, fullgraph refuses (without fullgraph dynamo runs those blocks
    eagerly: the README says to use the block)."""
    x, y = batch()
    eager = make_net(guidance="self")
    expected = step(eager, eager, x, y)
    model = make_net(guidance="self")
    model.checkpointing = "non_reentrant"
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    assert_same(expected, step(model, compiled, x, y))
    assert counter.frame_count == 1
    torch._dynamo.reset()
    bare = make_net(guidance="self")
    bare.checkpointing = "non_reentrant"
    with pytest.raises(Exception, match="(?i)side effect"):
        torch.compile(bare, backend="aot_eager", fullgraph=True)(x.clone().requires_grad_())


def test_compiled_timm_set_grad_checkpointing():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    base = ck.convert_resnet(timm.create_model("resnet18", num_classes=CLASSES), drop_prob=0.3).train()
    eager, model = copy.deepcopy(base), copy.deepcopy(base)
    model.set_grad_checkpointing(True)
    x, y = batch(n=2, size=32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    assert_same(step(eager, eager, x, y), step(model, compiled, x, y))


def test_checkpoint_without_the_random_state_fails_with_advice():
    x, y = batch()
    model = make_net()
    model.checkpointing = "no_rng"
    with ck.targets(model, y):
        loss = F.cross_entropy(model(x.clone().requires_grad_()), y)
    with pytest.raises(RuntimeError, match="preserve_rng_state=True"):
        loss.backward()


@pytest.mark.filterwarnings("ignore:Dynamo does not know how to trace")  # its eager fallback, tracing our checks
def test_checkpointing_a_compiled_module_fails_with_advice():
    """checkpoint(torch.compile(block)): the recomputation runs eagerly, and the compiled original
    forward left no record; the error says to compile the model with the checkpointing inside."""
    x, y = batch()
    model = make_net()
    torch._dynamo.reset()
    compiled_features = torch.compile(model.features, backend="aot_eager")
    with ck.targets(model, y):
        h = checkpoint(compiled_features, x.clone().requires_grad_(), use_reentrant=False)
        loss = F.cross_entropy(model.fc(h.mean((2, 3))), y)
    with pytest.raises(RuntimeError, match="compile the model with the checkpointing inside it"):
        loss.backward()


def test_freed_targets_fail_with_advice():
    """The layers hold the last few targets tensors; older ones only while something else does."""
    x, _ = batch()
    model = make_net()
    model.checkpointing = "non_reentrant"
    with ck.targets(model, torch.randint(0, CLASSES, (4,), generator=torch.Generator().manual_seed(1))):
        out = model(x.clone().requires_grad_())
    with torch.no_grad():
        for seed in range(camdrop_guide.RECENT):  # newer targets push the first ones out
            with ck.targets(model, torch.randint(0, CLASSES, (4,), generator=torch.Generator().manual_seed(seed))):
                model(x)
    gc.collect()
    with pytest.raises(RuntimeError, match="freed: keep the labels alive until backward"):
        out.sum().backward()


def test_history_is_bounded_and_copies_carry_none_of_it():
    x, y = batch()
    model = make_net()
    layer = ck.camdrop_layers(model)[0]
    with torch.no_grad():
        for seed in range(2 * camdrop_guide.RECENT):
            with ck.targets(model, y.clone()):
                model(x)
        assert len(layer.guide.recent) == camdrop_guide.RECENT and len(layer.guide.history) == 2 * camdrop_guide.RECENT
        with ck.targets(model, y):
            model(x)
            twin = copy.deepcopy(model)
    assert all(m.guide.targets is None and not m.guide.history and not m.guide.recent for m in ck.camdrop_layers(twin))
    with pytest.raises(RuntimeError, match="no targets"):
        twin(x)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="inductor needs a C++ compiler")
def test_inductor_checkpointing_matches_no_checkpointing():
    """The default backend: inductor draws its own random numbers, so compare compiled with and
    without checkpointing (each compiled once, ~30 s on 2 cores)."""
    x, y = batch()
    results = []
    for mode in (None, "non_reentrant"):
        model = make_net()
        model.checkpointing = mode
        torch._dynamo.reset()
        results.append(step(model, torch.compile(model, fullgraph=True), x, y))
    assert_same(*results)
