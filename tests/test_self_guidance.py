"""Guidance without labels (issue 24 item 2, SPEC.md v2.1): ``guidance="self"`` takes each sample's
channel-mean map as the CAM and its channel means as alpha; no classifier, no targets block. On
layers of every rank, in ``convert``, on timm ``features_only`` models and torchvision's FPN backbone."""
import contextlib

import pytest
import torch
import torch._dynamo.testing

import camdrop_kernels as ck
from camdrop_kernels import reference

from conftest import assert_bitwise_equal

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

LAYERS = {1: ck.CamDrop1d, 2: ck.CamDrop2d, 3: ck.CamDrop3d}
REFERENCES = {1: reference.camdrop1d, 2: reference.camdrop, 3: reference.camdrop3d}
SHAPES = {1: (3, 8, 40), 2: (3, 8, 9, 7), 3: (2, 8, 4, 6, 5)}


def drawn_seed(state_seed: int) -> int:
    """The seed a layer draws after torch.manual_seed(state_seed)."""
    torch.manual_seed(state_seed)
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_self_guided_layer_is_camdrop_of_its_own_means(rank, dtype):
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(SHAPES[rank], generator=g).to(dtype)
    layer = LAYERS[rank](0.7, 3, guidance="self", top_channels=0.5).train()
    seed = drawn_seed(5)
    torch.manual_seed(5)
    got = layer(x)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    cam = x.to(acc).mean(1)  # SPEC v2.1: accumulated in float32 (float64 for float64 x)
    alpha = x.to(acc).mean(tuple(range(2, x.dim())))
    want = REFERENCES[rank](x, cam, alpha, 0.7, 3, top_channels=0.5, seed=seed)
    assert_bitwise_equal(got, want)
    assert float(layer.last_dropped_fraction) > 0


def test_self_guidance_needs_no_classifier_and_refuses_one():
    with pytest.raises(ValueError, match="guidance='self' uses no classifier"):
        ck.CamDrop2d(0.1, 3, guidance="self", classifier=torch.nn.Linear(8, 2))
    with pytest.raises(ValueError, match="guidance must be one of"):
        ck.CamDrop2d(0.1, 3, guidance="labels")
    with pytest.raises(ValueError, match="guidance='self' uses no classifier"):
        ck.convert(torchvision.models.resnet18(), guidance="self", classifier="fc")


def test_timm_features_only_model_trains_without_labels():
    torch.manual_seed(0)
    model = ck.convert(timm.create_model("resnet18", features_only=True), drop_prob=0.5, guidance="self").train()
    x = torch.randn(2, 3, 128, 128)
    features = model(x)  # no targets block
    sum(f.square().mean() for f in features).backward()
    layers = ck.camdrop_layers(model)
    assert len(layers) == 4 and all(layer.guidance == "self" for layer in layers)
    assert sum(float(layer.last_dropped.sum()) for layer in layers) > 0
    model.eval()
    plain = timm.create_model("resnet18", features_only=True)
    plain.load_state_dict(model.state_dict())
    plain.eval()
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(x), plain(x)))


def test_torchvision_fpn_backbone_trains_without_labels():
    torch.manual_seed(0)
    detector = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                    num_classes=3, min_size=128, max_size=128)
    ck.convert(detector.backbone, drop_prob=0.5, guidance="self")
    detector.train()
    images = [torch.rand(3, 128, 128) for _ in range(2)]
    boxes = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])} for _ in range(2)]
    losses = detector(images, boxes)
    sum(losses.values()).backward()
    layers = ck.camdrop_layers(detector)
    assert [name for name, _ in detector.backbone.body.named_children()][-1] == "layer4"
    assert len(layers) == 9 and sum(float(layer.last_dropped.sum()) for layer in layers) > 0
    assert "did not run" not in ck.dropped_summary(detector)


def test_segmentation_models_default_to_self_guidance():
    """A segmentation model's head is a per-pixel 1x1 conv and its targets are masks: convert binds
    nothing by default (self guidance, trained without a targets block), refuses classifier guidance
    with the reason, and still takes an explicitly named image-level head."""
    torch.manual_seed(0)
    kw = dict(weights=None, weights_backbone=None, num_classes=3, aux_loss=False)
    model = ck.convert(torchvision.models.segmentation.deeplabv3_resnet50(**kw), drop_prob=0.5).train()
    layers = ck.camdrop_layers(model)
    assert len(layers) == 9 and all(layer.guidance == "self" for layer in layers)
    out = model(torch.randn(2, 3, 64, 64))["out"]
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 64, 64))).backward()
    assert sum(float(layer.last_dropped.sum()) for layer in layers) > 0
    for make in (torchvision.models.segmentation.fcn_resnet50, torchvision.models.segmentation.deeplabv3_resnet50):
        with pytest.raises(ValueError, match=r"a segmentation model\) predicts per pixel.*guidance='self'"):
            ck.convert(make(**kw), guidance="classifier")
    lraspp = ck.convert(torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3), drop_prob=0.5).train()  # (stages from its backbone)
    lraspp(torch.randn(2, 3, 128, 128))["out"].sum().backward()
    layers = ck.camdrop_layers(lraspp)
    assert len(layers) == 12 and all(layer.guidance == "self" for layer in layers)
    assert all(float(layer.last_dropped.sum()) > 0 for layer in layers)  # (8x8 and 16x16 maps: every one drops)
    mobile = ck.convert(torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=3, aux_loss=False), drop_prob=0.5).train()
    mobile(torch.randn(2, 3, 128, 128))["out"].sum().backward()  # (stages from its MobileNetV3 backbone)
    assert len(ck.camdrop_layers(mobile)) == 12 and sum(float(l.last_dropped.sum()) for l in ck.camdrop_layers(mobile))
    detector = ck.convert(torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                                               num_classes=3))
    assert len(ck.camdrop_layers(detector)) == 9  # (a detector too: self guidance, in its backbone's body)
    assert all(layer.guidance == "self" for layer in ck.camdrop_layers(detector))
    with pytest.raises(ValueError, match="guidance must be one of"):
        ck.convert(torchvision.models.segmentation.fcn_resnet50(**kw), guidance="Self")  # (not taken for 'self')
    with pytest.raises(ValueError, match=r"classifier\.4 is a conv that predicts per pixel"):
        ck.convert(torchvision.models.segmentation.fcn_resnet50(**kw), classifier="classifier.4")
    seg = torchvision.models.segmentation.fcn_resnet50(**kw)
    seg.image_head = torch.nn.Linear(2048, 3)  # (an image-level head the user trains beside it)
    ck.convert(seg, classifier="image_head")
    assert all(layer.guidance == "classifier" for layer in ck.camdrop_layers(seg))


def test_self_guided_layer_compiles():
    torch._dynamo.reset()
    layer = ck.CamDrop2d(0.7, 3, guidance="self").train()
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    compiled = torch.compile(lambda t: layer(t * 2).sum(), backend="aot_eager", fullgraph=True)
    torch.manual_seed(3)
    compiled(x).backward()
    eager = x.detach().clone().requires_grad_()
    torch.manual_seed(3)
    layer(eager * 2).sum().backward()
    assert torch.equal(x.grad, eager.grad)
    torch._dynamo.reset()


def test_a_compiled_self_guided_model_without_targets_compiles_once():
    """Self guidance needs no targets block, so nothing sizes the statistics before a compiled
    step: they are assigned, not read (reading them made step 2 trace differently from step 1: a
    recompile of the whole model). Each step's statistics are that step's, as in eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), ck.CamDrop2d(0.0, 3, guidance="self"),
                                torch.nn.ReLU()).train()
    layer = model[1]
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    for step, (rate, n) in enumerate(((0.0, 4), (0.3, 4), (0.5, 4), (0.2, 4))):
        ck.set_drop_prob(model, rate)
        x = torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(step))
        torch.manual_seed(step)
        compiled(x).sum().backward()
        got = (layer.last_dropped.clone(), float(layer.last_dropped_fraction))
        torch.manual_seed(step)
        model(x).sum().backward()
        assert torch.equal(got[0], layer.last_dropped) and got[1] == float(layer.last_dropped_fraction)
        assert (got[1] > 0) == (rate > 0)
    assert counter.frame_count == 1
    torch._dynamo.reset()


def test_eager_forwards_after_compiled_ones_report_their_own_share():
    """Compiled forwards without a targets block assign new statistics tensors; a later eager
    forward must still refill the element count it divides by, even when a compiled output reused
    the memory (and so the id) of the eager forward's last statistics (it did, in a few percent of
    such alternations, and the share came out doubled)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = ck.CamDrop2d(0.3, 3, guidance="self").train()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    big, small = torch.randn(4, 16, 12, 12), torch.randn(2, 16, 12, 12)
    for trial in range(200):
        # (every other trial inside a targets block for another batch size: statistics sized, then
        # assigned anyway because the shapes differ)
        with ck.targets(layer, torch.zeros(3, dtype=torch.long)) if trial % 2 else contextlib.nullcontext():
            layer(big)
            for _ in range(1 + trial % 4):
                compiled(small)
            assert float(layer.last_dropped_fraction) == pytest.approx(float(layer.last_dropped.sum()) / small.numel())
            layer(big)
            assert float(layer.last_dropped_fraction) == pytest.approx(float(layer.last_dropped.sum()) / big.numel())
    torch._dynamo.reset()


def test_steps_in_and_out_of_targets_blocks_keep_two_graphs():
    """A targets block sizes the statistics for its forwards (compiled ones write them in place);
    after it they are assigned again, so a compiled model used both ways keeps one graph for each
    instead of recompiling every step outside a block."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), ck.CamDrop2d(0.3, 3, guidance="self")).train()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    frames = []
    for step in range(6):
        x = torch.randn(4, 3, 10, 10)
        if step % 2:
            with ck.targets(model, torch.zeros(4, dtype=torch.long)):
                compiled(x).sum().backward()
        else:
            compiled(x).sum().backward()
        frames.append(counter.frame_count)
    assert frames[-1] == frames[1] <= 2, frames  # (no new graph after the first of each kind)
    # Sized statistics last for the block that sized them, also inside a set_targets scope.
    layer = model[1]
    layer.set_targets(torch.zeros(4, dtype=torch.long))
    with ck.targets(model, torch.zeros(4, dtype=torch.long)):
        assert layer.guide.presized
    assert not layer.guide.presized
    layer.set_targets(None)
    torch._dynamo.reset()
