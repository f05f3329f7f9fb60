"""Model integration: converted timm and torchvision ResNets train, compile, autocast and run under DDP."""
import copy
import os
import socket

import pytest
import torch
import torch.nn.functional as F

import camdrop_kernels as ck
from camdrop_kernels.training import camdrop_layers

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")


@pytest.fixture(autouse=True)
def _free_compiled_graphs():
    """Drop dynamo's caches after each test: compiled graphs left alive make the rest of a long
    pytest process slower (a larger heap for the garbage collector to walk)."""
    yield
    torch._dynamo.reset()


def make(lib, num_classes=10):
    torch.manual_seed(0)
    if lib == "timm":
        return timm.create_model("resnet18", num_classes=num_classes)
    return torchvision.models.resnet18(num_classes=num_classes)


def batch(n=4, size=64, num_classes=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.randint(0, num_classes, (n,), generator=g)


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_converted_model_trains_and_eval_is_unchanged(lib):
    model = make(lib)
    plain = copy.deepcopy(model)
    ck.convert_resnet(model, drop_prob=0.3, gamma_mode="eligible")
    layers = camdrop_layers(model)
    assert len(layers) == 4  # resnet18: 2 blocks in each of stages 3 and 4
    assert [l.block_size for l in layers] == [5, 5, 3, 3]
    assert [l.drop_prob for l in layers] == [0.3 / 4, 0.3 / 4, 0.3, 0.3]
    assert all(l.classifier is model.fc for l in layers)
    assert model.state_dict().keys() == plain.state_dict().keys()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for step in range(3):
        x, y = batch(seed=step)
        with ck.targets(model, y):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(loss)
        grads = [p.grad for p in model.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert model.conv1.weight.grad.abs().sum() > 0
        opt.step()
    fractions = [float(l.last_dropped_fraction) for l in layers]
    assert any(f > 0 for f in fractions) and all(0 <= f < 1 for f in fractions)
    model.eval()
    plain.load_state_dict(model.state_dict())
    plain.eval()
    x, _ = batch(seed=9)
    assert torch.equal(model(x), plain(x))


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_bound_layer_drops_the_classifier_top_channels(lib):
    """With every pixel eligible and gamma clamped to 1, exactly the top-alpha channels of the bound
    classifier's rows for each sample's class are dropped, whole."""
    model = ck.convert_resnet(make(lib), drop_prob=1.0, stages=(4,), top_pixels=1.0, gamma_mode="eligible").train()
    layer = camdrop_layers(model)[0]
    seen = {}
    # (clones: the block applies an in-place ReLU right after the layer)
    layer.register_forward_hook(lambda m, i, o: seen.update(x=i[0].clone(), y=o.clone()))
    x, y = batch(size=96)
    with ck.targets(model, y):
        model(x)
    inp, out = seen["x"], seen["y"]
    C = inp.shape[1]
    alpha = ck.channel_importance(model.fc.weight, y, C)
    top = torch.zeros(len(y), C, dtype=torch.bool).scatter_(1, alpha.topk(C // 8, dim=1).indices, True)
    dropped = (out == 0).flatten(2).all(2)
    assert torch.equal(dropped, top)


def test_soft_targets_and_targets_cleared_on_error():
    model = ck.convert_resnet(make("timm"), drop_prob=0.5).train()
    x, y = batch()
    soft = F.one_hot(y, 10).float() * 0.7 + 0.03
    with ck.targets(model, soft):
        assert torch.isfinite(model(x)).all()
    with pytest.raises(ZeroDivisionError):
        with ck.targets(model, y):
            raise ZeroDivisionError
    assert all(l.guide.targets is None for l in camdrop_layers(model))


def test_missing_targets_error_and_skip():
    model = ck.convert_resnet(make("torchvision"), drop_prob=0.5).train()
    x, _ = batch()
    with pytest.raises(RuntimeError, match=r"camdrop_kernels.targets\(model, labels\)"):
        model(x)
    skipping = ck.convert_resnet(make("torchvision"), drop_prob=0.5, missing_targets="skip").train()
    plain = make("torchvision").train()
    torch.manual_seed(3)
    a = skipping(x)
    torch.manual_seed(3)
    assert torch.equal(a, plain(x))


def test_targets_are_checked_once_by_the_context():
    model = ck.convert_resnet(make("timm"), drop_prob=0.5)
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        with ck.targets(model, torch.tensor([0, 1, 2, 10])):
            pass
    with pytest.raises(ValueError, match=r"soft targets must have shape \(N, 10\)"):
        with ck.targets(model, torch.rand(4, 9)):
            pass
    with pytest.raises(ValueError, match="no CamDrop layers"):
        with ck.targets(make("timm"), torch.tensor([1])):
            pass


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="supports timm ResNet-family models .* torchvision ResNets"):
        ck.convert_resnet(torchvision.models.mobilenet_v3_small())
    with pytest.raises(ValueError, match="stages"):
        ck.convert_resnet(make("timm"), stages=(5,))


@pytest.mark.parametrize("lib", ["timm", "torchvision"])
def test_compile_fullgraph_training_step(lib):
    torch._dynamo.reset()
    model = ck.convert_resnet(make(lib), drop_prob=0.3).train()
    compiled = torch.compile(model, fullgraph=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    for step in range(2):
        x, y = batch(seed=step)
        with ck.targets(compiled, y):
            loss = F.cross_entropy(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert any(float(layer.last_dropped_fraction) > 0 for layer in camdrop_layers(model))


def test_autocast_bfloat16_cpu():
    model = ck.convert_resnet(make("torchvision"), drop_prob=0.3).train()
    x, y = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16), ck.targets(model, y):
        out = model(x)
        loss = F.cross_entropy(out.float(), y)
    loss.backward()
    assert torch.isfinite(loss) and model.conv1.weight.grad is not None


def test_set_drop_prob_and_schedules():
    model = ck.convert_resnet(make("timm"), drop_prob=0.2)
    ck.set_drop_prob(model, 0.4)
    assert [l.drop_prob for l in camdrop_layers(model)] == [0.1, 0.1, 0.4, 0.4]
    # Hand-computed: decay at step 250 of 1000 -> 0.25 p; V peaks half-way, 0 at the ends.
    assert ck.linear_ramp(250, 1000, 0.2) == pytest.approx(0.05)
    assert ck.linear_ramp(0, 1000, 0.2) == 0.0 and ck.linear_ramp(5000, 1000, 0.2) == 0.2
    assert ck.v_schedule(0, 1000, 0.2) == 0.0
    assert ck.v_schedule(250, 1000, 0.2) == pytest.approx(0.1)
    assert ck.v_schedule(500, 1000, 0.2) == pytest.approx(0.2)
    assert ck.v_schedule(900, 1000, 0.2) == pytest.approx(0.04)
    assert ck.v_schedule(1000, 1000, 0.2) == 0.0
    assert ck.v_schedule(600, 1000, 0.2, peak_step=800) == pytest.approx(0.15)
    # Authors: keep_s = 1 - (1 - keep) / 4**(4 - s): keep 0.9 -> stage 3 keeps 0.975, stage 2 0.99375.
    assert 1 - ck.stage_drop_prob(0.1, 3) == pytest.approx(0.975)
    assert 1 - ck.stage_drop_prob(0.1, 2) == pytest.approx(0.99375)
    assert ck.stage_drop_prob(0.1, 4) == 0.1
    with pytest.raises(ValueError, match="drop_prob"):
        ck.set_drop_prob(model, 1.5)


def test_deepcopy_rebinds_hooks_and_classifier():
    model = ck.convert_resnet(make("torchvision"), drop_prob=0.5)
    twin = copy.deepcopy(model)
    assert all(l.classifier is twin.fc for l in camdrop_layers(twin))
    x, y = batch()
    twin.train()
    model.eval()
    with ck.targets(twin, y):
        twin(x)
    assert all(l.last_dropped_fraction is not None for l in camdrop_layers(twin))
    assert all(l.last_dropped_fraction is None for l in camdrop_layers(model))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, result_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    model = ck.convert_resnet(make("torchvision"), drop_prob=0.3)
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    for step in range(3):
        x, y = batch(seed=100 * rank + step)  # different data on each rank
        with ck.targets(ddp, y):
            loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    if rank == 0:
        torch.save(dict(same=torch.equal(gathered[0], gathered[1]), loss=float(loss.detach())), result_path)
    # DDP's reducer goes before its process group (torch 2.11 could hang in teardown otherwise).
    del ddp, opt, loss
    dist.barrier()
    dist.destroy_process_group()


def test_ddp_gloo_two_processes(tmp_path):
    import time

    import torch.multiprocessing as mp

    result = tmp_path / "ddp.pt"
    ctx = mp.spawn(_ddp_worker, args=(2, _free_port(), str(result)), nprocs=2, join=False)
    deadline = time.monotonic() + 300
    while not ctx.join(timeout=5):  # raises if a worker failed
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("DDP workers hung for 300 s")
    out = torch.load(result)
    assert out["same"], "parameters diverged across ranks"
    assert 0.0 < out["loss"] < 100.0
