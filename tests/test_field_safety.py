"""Issue 21, "safe in the field": each failure found by trying the package as a hostile user would,
with the class behind it. Every test here fails on the release before the fix."""
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import nn

import camdrop_kernels as ck
from camdrop_kernels import reference

from conftest import BACKENDS, INTERPRETED, assert_bitwise_equal

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

KW = dict(drop_prob=0.6, block_size=3, seed=11, top_channels=0.5)


def inputs(dtype=torch.float32, shape=(2, 8, 7, 6)):
    g = torch.Generator().manual_seed(3)
    N, C, H, W = shape
    return (torch.randn(shape, generator=g, dtype=dtype), torch.randn(N, H, W, generator=g),
            torch.randn(N, C, generator=g))


# ---------------------------------------------------------------------------------------------
# 1. Tensors whose memory or flags DLPack cannot carry: zero tensors, negative views, misalignment
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_sgn_backward_with_a_zero_tensor_gradient_runs_in_a_fresh_process(backend_name):
    """torch.sgn's backward hands autograd an efficient zero tensor (data pointer 0) as dy: the
    native apply read address 0 (SIGSEGV). Now dx is zero, in a fresh process that must survive."""
    code = textwrap.dedent(f"""
        import os, torch
        import camdrop_kernels as ck
        from camdrop_kernels import backends
        x = torch.randn(2, 8, 7, 6, requires_grad=True)
        with backends.using({backend_name!r}):
            torch.sgn(ck.camdrop(x, torch.randn(2, 7, 6), torch.randn(2, 8), 0.6, 3, seed=1)).sum().backward()
            z = torch._efficientzerotensor((2, 8, 7, 6))
            y = ck.camdrop(z, torch.randn(2, 7, 6), torch.randn(2, 8), 0.6, 3, seed=1)
        assert torch.equal(x.grad, torch.zeros_like(x)), x.grad
        assert torch.equal(y, torch.zeros(2, 8, 7, 6)) and not y._is_zerotensor()
        print("ok")
    """)
    env = dict(os.environ, TRITON_INTERPRET=os.environ.get("TRITON_INTERPRET", "0"))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, (run.returncode, run.stderr[-2000:])


def test_negative_views_and_misaligned_memory_are_read_as_their_values(backend):
    """A float view with the negative bit (``z.conj().imag``) gave exactly -reference on the native
    path (DLPack drops the bit); a buffer at an odd address reached typed loads (UB)."""
    x, cam, alpha = inputs()
    z = torch.complex(torch.zeros_like(x), -x)
    neg_x = z.conj().imag  # values x, memory -x, negative bit set
    assert neg_x.is_neg() and torch.equal(neg_x, x)
    want = reference.camdrop(x, cam, alpha, **KW)
    assert_bitwise_equal(ck.camdrop(neg_x, cam, alpha, **KW), want)
    neg_cam = torch.complex(torch.zeros_like(cam), -cam).conj().imag
    assert_bitwise_equal(ck.camdrop(x, neg_cam, alpha, **KW), want)
    raw = bytearray(x.numel() * 4 + 1)
    odd = torch.frombuffer(raw, dtype=torch.float32, offset=1, count=x.numel()).view(x.shape)
    odd.copy_(x)
    assert odd.data_ptr() % 4 != 0
    assert_bitwise_equal(ck.camdrop(odd, cam, alpha, **KW), want)
    ck.camdrop(odd, cam, alpha, **KW, inplace=True)
    assert_bitwise_equal(odd, want)


def test_zero_tensors_and_odd_memory_in_the_saved_state_are_refused():
    x, cam, alpha = inputs()
    from camdrop_kernels.options import Options

    opts = Options.get(2, 3, None, 0.5, "square", "batch", "eligible", 1.0)
    slots, bits, scale = torch.ops.camdrop_kernels.camdrop_state(x, cam, alpha, torch.tensor(1),
                                                                 torch.tensor(0.5, dtype=torch.float64), opts.key)[:3]
    for bad in (torch._efficientzerotensor(slots.shape, dtype=torch.int32), ):
        with pytest.raises(ValueError, match="slots must be (contiguous|an ordinary tensor)"):
            torch.ops.camdrop_kernels.camdrop_apply(x, bad, bits, scale)
    with pytest.raises((ValueError, RuntimeError), match="zero tensor|ZeroTensors are immutable"):
        torch.ops.camdrop_kernels.camdrop_apply_(torch._efficientzerotensor(x.shape), slots, bits, scale)
    with pytest.raises(ValueError, match="zero tensor"):
        ck.camdrop(torch._efficientzerotensor(x.shape), cam, alpha, **KW, inplace=True)


# ---------------------------------------------------------------------------------------------
# 2. A replaced head guides the layers
# ---------------------------------------------------------------------------------------------
def test_layers_follow_a_replaced_head():
    """Fine-tuning: convert, then replace the head. The layers were bound to the old 1000-class
    head (gone from the model, never trained) and checked labels against it."""
    x, y = torch.randn(2, 3, 96, 96), torch.tensor([3, 7])
    model = ck.convert(torchvision.models.resnet18(num_classes=1000), drop_prob=0.3).train()
    model.fc = nn.Linear(512, 10)
    with ck.targets(model, y):
        model(x)
    assert all(layer.classifier is model.fc for layer in ck.camdrop_layers(model))
    timm_model = ck.convert(timm.create_model("resnet18", num_classes=1000), drop_prob=0.3).train()
    timm_model.reset_classifier(10)
    with ck.targets(timm_model, y):
        timm_model(x)
    assert all(layer.classifier is timm_model.fc for layer in ck.camdrop_layers(timm_model))
    with pytest.raises(ValueError, match=r"class indices in \[0, 10\)"):
        with ck.targets(timm_model, torch.tensor([3, 500])):
            pass
    timm_model.reset_classifier(0)
    with pytest.raises(RuntimeError, match="num_classes=0"):
        with ck.targets(timm_model, y):
            pass


# ---------------------------------------------------------------------------------------------
# 3. Module-swapping utilities after convert; "did not run" is not "dropped 0%"
# ---------------------------------------------------------------------------------------------
def _ran(model):
    return {name: s["ran"] for name, s in ck.dropped_stats(model).items()}


@pytest.mark.parametrize("swap", ["sync_batchnorm", "replace_bn", "timm_freeze_bn"])
def test_layers_survive_module_swaps(swap):
    torch.manual_seed(0)
    model = ck.convert(torchvision.models.resnet18(num_classes=10), drop_prob=0.5).train()
    if swap == "sync_batchnorm":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    elif swap == "replace_bn":
        model.layer4[1].bn1 = nn.BatchNorm2d(512)
    else:
        from timm.layers import freeze_batch_norm_2d

        model = freeze_batch_norm_2d(model).train()
    x, y = torch.randn(2, 3, 128, 128), torch.tensor([1, 2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "did not run" warning
        with ck.targets(model, y):
            model(x)
    layers = ck.camdrop_layers(model)
    assert len(layers) == 4 and all(_ran(model).values())
    assert sum(float(layer.last_dropped.sum()) for layer in layers) > 0


def test_a_layer_that_did_not_run_is_reported_as_not_run():
    torch.manual_seed(0)
    model = ck.convert(torchvision.models.resnet18(num_classes=10), drop_prob=0.5).train()
    x, y = torch.randn(2, 3, 96, 96), torch.tensor([1, 2])
    with ck.targets(model, y):
        model(x)
    with pytest.warns(RuntimeWarning, match="2 of 4 CamDrop layers did not run"):
        with ck.targets(model, y):  # a forward that never reaches layer4
            model.layer3(model.layer2(model.layer1(model.maxpool(model.conv1(x)))))
    stats = ck.dropped_stats(model)
    assert [s["ran"] for s in stats.values()] == [True, True, False, False]
    assert "layer4.0.bn1.camdrop did not run" in ck.dropped_summary(model)
    assert stats["layer4.0.bn1.camdrop"]["fraction"] is None


def test_layers_whose_place_is_gone_are_reported():
    torch.manual_seed(0)
    model = ck.convert(torchvision.models.resnet18(num_classes=10), drop_prob=0.5).train()
    model.layer4[1] = nn.Identity()  # (a restructured model: this place and its layer are gone)
    with pytest.warns(RuntimeWarning, match="1 CamDrop layers that convert placed cannot run.*'layer4.1.bn1'"):
        with ck.targets(model, torch.tensor([1, 2])):
            model(torch.randn(2, 3, 96, 96))


# ---------------------------------------------------------------------------------------------
# 8. Threads
# ---------------------------------------------------------------------------------------------
def test_targets_belong_to_one_thread_and_end_with_the_block():
    torch.manual_seed(0)
    model = ck.convert(torchvision.models.resnet18(num_classes=10), drop_prob=0.3).train()
    x, y = torch.randn(2, 3, 96, 96), torch.tensor([1, 2])
    errors = []
    inside, release = threading.Event(), threading.Event()

    def other():
        inside.wait()
        try:
            model(x)  # no block of its own: must not use the main thread's labels
        except RuntimeError as e:
            errors.append(str(e))
        try:
            with ck.targets(model, y):
                pass
        except RuntimeError as e:
            errors.append(str(e))
        release.set()

    t = threading.Thread(target=other)
    t.start()
    with ck.targets(model, y):
        inside.set()
        release.wait(60)
    t.join(60)
    assert len(errors) == 2 and "another thread" in errors[0] and "another thread" in errors[1]
    with pytest.raises(RuntimeError, match="no targets"):
        model(x)  # the labels did not outlive the block


# ---------------------------------------------------------------------------------------------
# 9. Binary heads
# ---------------------------------------------------------------------------------------------
def test_single_logit_heads_guide_negatives_by_the_negated_weight():
    w = torch.randn(1, 16)
    labels = torch.tensor([1, 0, 1])
    alpha = ck.channel_importance(w, labels, 16)
    assert torch.equal(alpha, torch.stack([w[0], -w[0], w[0]]))
    probs = torch.tensor([[1.0], [0.0], [0.75]])
    assert torch.equal(ck.channel_importance(w, probs, 16)[2], 0.5 * w[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ck.channel_importance(w, torch.tensor([2, 0]), 16)
    model = ck.convert(torchvision.models.resnet18(num_classes=1), drop_prob=0.5).train()
    x = torch.randn(3, 3, 96, 96)
    with ck.targets(model, labels):
        loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], labels.float())
    loss.backward()
    assert all(_ran(model).values())


# ---------------------------------------------------------------------------------------------
# 10. Autograd beyond reverse mode
# ---------------------------------------------------------------------------------------------
def test_forward_mode_ad_gives_the_apply_of_the_tangent(backend):
    if backend in INTERPRETED:
        pytest.skip("interpreted: covered by the fast backends")
    x, cam, alpha = (t.double() for t in inputs())
    tangent = torch.randn_like(x)
    want_y, want_t = reference.camdrop(x, cam, alpha, **KW), reference.camdrop(tangent, cam, alpha, **KW)
    with fwAD.dual_level():
        y, t = fwAD.unpack_dual(ck.camdrop(fwAD.make_dual(x, tangent), cam, alpha, **KW))
        assert torch.equal(y, want_y) and torch.equal(t, want_t)
        y, t = fwAD.unpack_dual(ck.camdrop(fwAD.make_dual(x.clone(), tangent.clone()), cam, alpha, **KW,
                                           inplace=True))
        assert torch.equal(y, want_y) and torch.equal(t, want_t)
        layer = ck.CamDrop2d(0.6, 3, top_channels=0.5).train()
        torch.manual_seed(4)
        seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))  # the seed the layer draws
        torch.manual_seed(4)
        y1, t1 = fwAD.unpack_dual(layer(fwAD.make_dual(x, tangent), cam, alpha))
        opts = dict(drop_prob=0.6, block_size=3, top_channels=0.5, seed=seed)
        assert torch.equal(y1, reference.camdrop(x, cam, alpha, **opts))
        assert torch.equal(t1, reference.camdrop(tangent, cam, alpha, **opts))


def test_batched_gradients_and_vectorised_jacobians(backend):
    if backend in INTERPRETED:
        pytest.skip("interpreted: covered by the fast backends")
    x, cam, alpha = (t.double() for t in inputs(shape=(1, 2, 4, 4)))
    f = lambda t: ck.camdrop(t, cam, alpha, 0.6, 3, seed=2)  # noqa: E731
    assert torch.equal(torch.autograd.functional.jacobian(f, x, vectorize=True),
                       torch.autograd.functional.jacobian(f, x))
    xs = x.clone().requires_grad_()
    v = torch.randn(3, *x.shape, dtype=torch.float64)
    batched = torch.autograd.grad(f(xs), xs, v, is_grads_batched=True)[0]
    looped = torch.stack([torch.autograd.grad(f(xs), xs, vi)[0] for vi in v])
    assert torch.equal(batched, looped)
    assert torch.autograd.gradcheck(f, (xs,)) and torch.autograd.gradgradcheck(f, (xs,))


@pytest.mark.parametrize("transform", ["jvp", "vmap", "grad"])
def test_torch_func_transforms_fail_with_advice(transform):
    x, cam, alpha = inputs()
    f = lambda t: ck.camdrop(t, cam, alpha, **KW)  # noqa: E731
    with pytest.raises(RuntimeError, match="torch.func transforms"):
        if transform == "jvp":
            torch.func.jvp(f, (x,), (x,))
        elif transform == "vmap":
            torch.func.vmap(f)(x[None])
        else:
            torch.func.grad(lambda t: f(t).sum())(x)


def test_direct_op_calls_with_tangents_are_refused():
    from camdrop_kernels.options import Options

    x, cam, alpha = inputs()
    opts = Options.get(2, 3, None, 0.5, "square", "batch", "eligible", 1.0)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="forward-mode AD|jvp is not implemented"):
        torch.ops.camdrop_kernels.camdrop(fwAD.make_dual(x, x), cam, alpha, torch.tensor(1),
                                          torch.tensor(0.5, dtype=torch.float64), opts.key)


# ---------------------------------------------------------------------------------------------
# 11. Messages
# ---------------------------------------------------------------------------------------------
def test_messages_name_the_argument():
    x, cam, alpha = inputs()
    overlapping = torch.randn(200).as_strided(x.shape, (1, 1, 1, 1))
    with pytest.raises(ValueError, match=r"^camdrop\(inplace=True\) needs x without overlapping"):
        ck.camdrop(overlapping, cam, alpha, **KW, inplace=True)
    with pytest.raises(ValueError, match="last_stage must be an int >= 1; got 4.5"):
        ck.stage_drop_prob(0.1, 1, last_stage=4.5)
    with pytest.raises(ValueError, match="last_stage must be an int >= 1; got 0"):
        ck.stage_drop_prob(0.1, 1, last_stage=0)
    assert torch.equal(ck.camdrop(x, cam, alpha, **KW, training=np.bool_(True)), ck.camdrop(x, cam, alpha, **KW))
    with pytest.raises(TypeError, match="training must be a bool.*got str"):
        ck.camdrop(x, cam, alpha, **KW, training="yes")
    for fn in (lambda: ck.set_drop_prob("m", 0.1), lambda: ck.dropped_summary("m"), lambda: ck.dropped_stats("m"),
               lambda: ck.camdrop_layers("m")):
        with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
            fn()
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        with ck.targets("m", torch.tensor([1])):
            pass
    # Masks are not image labels: a classifier-bound model says what guides it instead; a self-guided
    # one reads no labels and takes them (the block only sizes its statistics).
    def small(**kw):
        return ck.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)),
                          where=["1"], **kw)
    masks = torch.zeros(2, 6, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"got shape \(2, 6, 6\)\. Per-pixel targets .* guidance='self'"):
        with ck.targets(small(), masks):
            pass
    with ck.targets(small(guidance="self"), masks):
        pass


# ---------------------------------------------------------------------------------------------
# 13. FX
# ---------------------------------------------------------------------------------------------
def test_fx_traces_a_layer_as_root_and_the_function():
    x, cam, alpha = inputs()
    layer = ck.CamDrop2d(0.6, 3, top_channels=0.5).train()
    gm = torch.fx.symbolic_trace(layer)
    torch.manual_seed(1)
    want = layer(x, cam, alpha)
    torch.manual_seed(1)
    assert torch.equal(gm(x, cam, alpha), want)

    class UsesFunction(nn.Module):
        def forward(self, x, cam, alpha):
            return ck.camdrop(x * 2, cam, alpha, **KW) + 1

    traced = torch.fx.symbolic_trace(UsesFunction())
    assert any(node.target is ck.camdrop for node in traced.graph.nodes)
    assert torch.equal(traced(x, cam, alpha), UsesFunction()(x, cam, alpha))
    from torchvision.models.feature_extraction import create_feature_extractor

    extractor = create_feature_extractor(layer, train_return_nodes={"camdrop": "out"},
                                         eval_return_nodes={"x": "out"}).train()
    torch.manual_seed(2)
    got = extractor(x, cam, alpha)["out"]
    torch.manual_seed(2)
    assert torch.equal(got, layer(x, cam, alpha))
    self_guided = ck.CamDrop2d(0.6, 3, guidance="self").train()
    gm = torch.fx.symbolic_trace(self_guided, concrete_args={"cam": None, "alpha": None})
    torch.manual_seed(3)
    got = gm(x)
    torch.manual_seed(3)
    assert torch.equal(got, self_guided(x))


# ---------------------------------------------------------------------------------------------
# 15. Sharded training on PyTorch's own engines (gloo, two processes)
# ---------------------------------------------------------------------------------------------
def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sharded_worker(rank, world, port, mode, result_path):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = ck.convert(torchvision.models.resnet18(num_classes=10), drop_prob=0.5)
    if mode == "fsdp2":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh("cpu", (world,))
        for unit in (model.layer1, model.layer2, model.layer3, model.layer4, model.fc):  # the head its own unit
            fully_shard(unit, mesh=mesh)
        wrapped = fully_shard(model, mesh=mesh)
    elif mode == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy
        from torchvision.models.resnet import BasicBlock

        wrapped = FSDP(model, use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy({BasicBlock}),
                       device_id=torch.device("cpu"))
    else:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(model)
        if mode == "ddp_compile":
            wrapped = torch.compile(wrapped, backend="aot_eager")
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    g = torch.Generator().manual_seed(rank)
    shares = []
    for _ in range(2):
        x, y = torch.randn(4, 3, 96, 96, generator=g), torch.randint(0, 10, (4,), generator=g)
        with ck.targets(wrapped, y):
            loss = F.cross_entropy(wrapped(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        shares.append(sum(float(layer.last_dropped.sum()) for layer in ck.camdrop_layers(model)))
    if rank == 0:
        torch.save(dict(shares=shares, ran=all(_ran(model).values()), loss=float(loss.detach())), result_path)
    del wrapped, opt, loss
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp_compile", "fsdp2", "fsdp1"])
def test_sharded_training_runs_and_drops(mode, tmp_path):
    import time

    import torch.multiprocessing as mp

    result = tmp_path / "out.pt"
    ctx = mp.spawn(_sharded_worker, args=(2, _free_port(), mode, str(result)), nprocs=2, join=False)
    deadline = time.monotonic() + 400
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"{mode} workers hung")
    out = torch.load(result)
    assert out["ran"] and all(s > 0 for s in out["shares"]) and 0 < out["loss"] < 100


# ---------------------------------------------------------------------------------------------
# Label read-back: does a model read the label off a classifier-guided mask?
# ---------------------------------------------------------------------------------------------
def test_label_readback_measures_and_restores():
    torch.manual_seed(0)
    model = ck.convert(torchvision.models.resnet18(num_classes=4), drop_prob=0.3).train()
    ck.set_drop_prob(model, 0.0)
    x, y = torch.randn(6, 3, 128, 128), torch.tensor([0, 1, 2, 3, 0, 1])
    rates = [layer.drop_prob for layer in ck.camdrop_layers(model)]
    with pytest.raises(ValueError, match="rate is 0"):  # (it would measure nothing, and read as "no leak")
        ck.label_readback(model, x, y)
    out = ck.label_readback(model, x, y, drop_prob=1.0)
    stats = ck.dropped_stats(model)
    assert len(stats) == len(rates) and all(s["ran"] for s in stats.values())
    assert any(float(s["fraction"]) > 0 for s in stats.values())  # (a 3x3 map at block 3 may drop nothing)
    assert set(out) == {"eval", "true_guided", "wrong_guided", "follows_wrong", "eval_follows_wrong"}
    assert all(0.0 <= v <= 1.0 for v in out.values())
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert [layer.drop_prob for layer in ck.camdrop_layers(model)] == rates  # rates restored
    with pytest.raises(ValueError, match="no classifier-guided"):
        ck.label_readback(ck.convert(torchvision.models.resnet18(), guidance="self"), x, y)


def test_label_readback_drops_on_vision_transformers():
    """The check the convert warning points ViT users to: its token-map wrappers must drop too."""
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=4)
    with pytest.warns(UserWarning, match="classifier guidance on a vision transformer"):
        ck.convert(model, drop_prob=0.5, guidance="classifier")
    x, y = torch.randn(8, 3, 32, 32), torch.arange(8) % 4
    ck.label_readback(model, x, y, drop_prob=1.0)
    stats = ck.dropped_stats(model)
    assert stats and all(s["ran"] and float(s["fraction"]) > 0 for s in stats.values())


def test_label_readback_refuses_to_measure_layers_that_did_not_run():
    class Unused(nn.Module):  # a classifier-guided layer the forward never reaches
        def __init__(self):
            super().__init__()
            self.body, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Linear(8, 3)
            self.drop = ck.CamDrop2d(0.3, 3, classifier=self.fc)

        def forward(self, x):
            return self.fc(self.body(x).mean((2, 3)))

    with pytest.raises(RuntimeError, match="did not run"):
        ck.label_readback(Unused(), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]), drop_prob=0.5)


def test_label_readback_reads_the_current_head():
    torch.manual_seed(0)
    model = ck.convert(torchvision.models.resnet18(num_classes=10), drop_prob=0.3)
    model.fc = nn.Linear(512, 3)  # fine-tuning: a new head after convert
    out = ck.label_readback(model, torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 2]), drop_prob=0.5)
    assert 0.0 <= out["follows_wrong"] <= 1.0
    assert all(layer.classifier is model.fc for layer in ck.camdrop_layers(model))


def test_a_train_mode_forward_under_inference_mode_leaves_the_layers_usable():
    """An MC-dropout pass (train mode under torch.inference_mode) leaves inference tensors as the
    statistics; later targets blocks, and ones opened under inference_mode, still work."""
    torch.manual_seed(0)
    model = ck.convert(torchvision.models.resnet18(num_classes=4), drop_prob=0.3).train()
    self_guided = nn.Sequential(ck.CamDrop2d(0.3, 3, guidance="self")).train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    with torch.inference_mode():
        self_guided(torch.randn(2, 8, 6, 6))
        with ck.targets(model, y):
            model(x)
    assert all(s["ran"] for s in ck.dropped_stats(model).values())
    with ck.targets(model, y):
        model(x).sum().backward()
    stats = ck.dropped_stats(model).values()
    assert all(s["ran"] for s in stats) and any(float(s["fraction"]) > 0 for s in stats)
    self_guided(torch.randn(2, 8, 6, 6))
    assert float(self_guided[0].last_dropped_fraction) > 0
