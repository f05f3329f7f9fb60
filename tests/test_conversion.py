"""``convert`` on any CNN: placement, state_dict, eval identity, training, torch.compile, errors.

Architectures: timm convnext_nano, efficientnet_b0, regnetx_002, resnet18; torchvision
mobilenet_v3_small, efficientnet_b0, resnet18, the video r3d_18 (3-D) and a 1-D sequence CNN
written here. Every one converts with the default ``where`` (no manual placement needed).
"""
import copy
import functools

import pytest
import torch
import torch._dynamo.testing
import torch.nn.functional as F
from torch import nn

import camdrop_kernels as ck
from camdrop_kernels.nn import CamDrop1d, CamDrop2d, CamDrop3d

from conftest import assert_bitwise_equal

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

CLASSES = 6


@pytest.fixture(autouse=True)
def _free_compiled_graphs():
    """Drop dynamo's caches after each test: compiled graphs left alive make the rest of a long
    pytest process slower (a larger heap for the garbage collector to walk)."""
    yield
    torch._dynamo.reset()


class SeqCNN(nn.Module):
    """A small 1-D CNN for sequences (4-channel signals): conv-BN-ReLU blocks in ``features``,
    global average pooling, a linear classifier."""

    def __init__(self, channels: int = 4, classes: int = CLASSES) -> None:
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv1d(cin, cout, 5, stride, 2, bias=False), nn.BatchNorm1d(cout), nn.ReLU())

        self.features = nn.Sequential(block(channels, 16, 1), block(16, 32, 2), block(32, 32, 1), block(32, 64, 2),
                                      block(64, 64, 1))
        self.fc = nn.Linear(64, classes)

    def forward(self, x):
        return self.fc(self.features(x).mean(-1))


def linear_head(model, channels):
    """torchvision's MobileNetV3 with its MLP head (Linear, Hardswish, Dropout, Linear) replaced by one
    linear layer on the pooled channels: convert refuses the MLP head (no channel has weights of its own)."""
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(channels, CLASSES))
    return model


BUILDERS = {
    "timm_convnext_nano": lambda: timm.create_model("convnext_nano", num_classes=CLASSES),
    "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=CLASSES),
    "timm_regnetx_002": lambda: timm.create_model("regnetx_002", num_classes=CLASSES),
    "timm_resnet18": lambda: timm.create_model("resnet18", num_classes=CLASSES),
    "tv_mobilenet_v3_small": lambda: linear_head(torchvision.models.mobilenet_v3_small(num_classes=CLASSES), 576),
    "tv_efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=CLASSES),
    "tv_resnet18": lambda: torchvision.models.resnet18(num_classes=CLASSES),
    "tv_r3d_18": lambda: torchvision.models.video.r3d_18(num_classes=CLASSES),
    "seq_cnn_1d": lambda: SeqCNN(),
}
# The default placement (every block of the last two stages): (count, first, last, rank, classifier).
PLACES = {
    "timm_convnext_nano": (10, "stages.2.blocks.0", "stages.3.blocks.1", 2, "head.fc"),
    "timm_efficientnet_b0": (11, "blocks.3.0", "blocks.6.0", 2, "classifier"),
    "timm_regnetx_002": (11, "s3.b1", "s4.b7", 2, "head.fc"),
    "timm_resnet18": (4, "layer3.0.drop_block", "layer4.1.drop_block", 2, "fc"),
    "tv_mobilenet_v3_small": (8, "features.4", "features.11", 2, "classifier.1"),
    "tv_efficientnet_b0": (11, "features.4.0", "features.7.0", 2, "classifier.1"),
    "tv_resnet18": (4, "layer3.0.bn1", "layer4.1.bn1", 2, "fc"),
    "tv_r3d_18": (4, "layer3.0", "layer4.1", 3, "fc"),
    "seq_cnn_1d": (4, "features.1", "features.4", 1, "fc"),
}
# Compiling these three takes 15-25 s each on 2 cores.
SLOW = {"timm_convnext_nano", "timm_efficientnet_b0", "tv_efficientnet_b0"}


@functools.lru_cache(maxsize=None)
def _plain(name):
    torch.manual_seed(0)
    return BUILDERS[name]()


def plain(name):
    """A fresh copy of the seeded, unconverted model (each built once per session)."""
    return copy.deepcopy(_plain(name))


def batch(name, n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = {"tv_r3d_18": (n, 3, 4, 32, 32), "seq_cnn_1d": (n, 4, 64)}.get(name, (n, 3, 32, 32))
    return torch.randn(shape, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def grads_of_step(model, run, x, y, seed=7):
    """One training forward/backward of ``run`` (the model or its compiled form) with a fixed seed."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    with ck.targets(model, y):
        out = run(x)
    loss = F.cross_entropy(out, y)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in BUILDERS])
def test_converted_model_trains_compiles_and_evaluates_unchanged(name):
    reference = plain(name)
    model = ck.convert(plain(name), drop_prob=0.3)
    count, first, last, rank, classifier = PLACES[name]
    layers = ck.camdrop_layers(model)
    assert len(layers) == count
    assert all(type(layer) is {1: CamDrop1d, 2: CamDrop2d, 3: CamDrop3d}[rank] for layer in layers)
    assert all(layer.classifier is model.get_submodule(classifier) for layer in layers)
    # state_dict keys unchanged: pretrained weights load into the converted model as they are.
    assert list(model.state_dict()) == list(reference.state_dict())
    model.load_state_dict(reference.state_dict(), strict=True)
    x, _ = batch(name, seed=9)
    with torch.no_grad():
        out = model.eval()(x)
        assert torch.isfinite(out).all() and torch.equal(out, reference.eval()(x))

    # torch.compile(fullgraph=True): the first step's gradients equal eager ones bit for bit, and
    # changing the rate (a schedule) does not recompile.
    model.train()
    x, y = batch(name)
    eager_loss, eager_grads = grads_of_step(model, model, x, y)
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(model, backend=counter, fullgraph=True)
    loss, grads = grads_of_step(model, compiled, x, y)
    assert torch.equal(loss, eager_loss) and all(torch.equal(a, b) for a, b in zip(grads, eager_grads))

    # Three training steps (SGD) on the compiled model, with a schedule.
    opt = torch.optim.SGD(model.parameters(), lr=0.001)
    for step in range(3):
        ck.set_drop_prob(model, ck.linear_ramp(step + 1, 3, 0.3))
        x, y = batch(name, seed=step + 1)
        with ck.targets(compiled, y):
            loss = F.cross_entropy(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.isfinite(loss)
    assert counter.frame_count == 1
    fractions = [float(layer.last_dropped_fraction) for layer in layers]
    assert any(f > 0 for f in fractions) and all(0 <= f < 1 for f in fractions)

    # Eval after training: bit-identical to the unconverted model with the same weights and buffers.
    # (With 3 steps at batch 2, the EfficientNets' BN running statistics can make eval outputs
    # overflow to NaN; the comparison is of bit patterns, NaN matching NaN.)
    model.eval()
    reference.load_state_dict(model.state_dict())
    reference.eval()
    with torch.no_grad():
        assert_bitwise_equal(model(x), reference(x), "eval output")


@pytest.mark.parametrize("name", list(BUILDERS))
def test_default_places(name):
    count, first, last, rank, classifier = PLACES[name]
    places = ck.conversion_places(plain(name))
    assert len(places) == count and places[0].name == first and places[-1].name == last
    assert {p.rank for p in places} == {rank}
    assert ck.find_classifier(_plain(name)) is _plain(name).get_submodule(classifier)
    # The last stage gets the full rate and block 3, the one before a quarter and block 5.
    model = ck.convert(plain(name), 0.2)
    stage_of = {p.name: p.stage for p in places}
    assert set(stage_of.values()) == {0, 1}
    for layer, place in zip(ck.camdrop_layers(model), places):
        assert (layer.drop_prob, layer.block_size) == ((0.2, 3) if place.stage == 0 else (0.2 / 4, 5))


def test_where_forms():
    model = plain("timm_convnext_nano")
    names = lambda where, **kw: [p.name for p in ck.conversion_places(model, where, **kw)]  # noqa: E731
    assert names(None) == names(2)
    assert names(1) == ["stages.3.blocks.0", "stages.3.blocks.1"]
    assert names("stages.3.blocks.1") == ["stages.3.blocks.1"]
    assert names("stages.3.blocks.*") == ["stages.3.blocks.0", "stages.3.blocks.1"]  # * stays in one segment
    assert names("stages.3.*") == ["stages.3.downsample", "stages.3.blocks"]
    assert names("stages.3.**.conv_dw") == ["stages.3.blocks.0.conv_dw", "stages.3.blocks.1.conv_dw"]
    assert names("stages.[23].blocks.1") == ["stages.2.blocks.1", "stages.3.blocks.1"]
    assert names(r"re:stages\.3\.blocks\.\d") == ["stages.3.blocks.0", "stages.3.blocks.1"]
    assert names([model.stages[3].blocks[1], "stages.2.blocks.0"]) == ["stages.2.blocks.0", "stages.3.blocks.1"]
    assert names(4)[0] == "stages.0.blocks.0"
    # The rank is read from the place (its first conv, else the last conv before it), or given.
    assert {p.rank for p in ck.conversion_places(model, "stages.3.blocks.0.norm")} == {2}
    assert {p.rank for p in ck.conversion_places(model, "stages.3.blocks.0", rank=3)} == {3}


def test_places_that_cannot_work_are_refused_before_the_model_changes():
    """Two places dropping one output (a Sequential and its last child) would drop twice; a Linear
    has no map; rank True is not a rank; an unknown classifier name is named."""
    model = plain("tv_resnet18")
    keys = set(model.state_dict())
    with pytest.raises(ValueError, match="both drop the output of 'layer4.1'"):
        ck.convert(model, where=["layer4", "layer4.1"])
    with pytest.raises(ValueError, match="'fc' is an nn.Linear"):
        ck.convert(model, where="fc")
    with pytest.raises(ValueError, match="rank must be 1, 2 or 3; got True"):
        ck.convert(model, where="layer4", rank=True)
    with pytest.raises(ValueError, match="classifier 'head' is not a submodule"):
        ck.convert(model, classifier="head")
    assert not ck.camdrop_layers(model) and set(model.state_dict()) == keys


def test_named_places_get_their_stage_defaults_and_a_plain_sequential_is_hooked_at_its_end():
    model = ck.convert(plain("tv_efficientnet_b0"), 0.4, where=["features.6", "features.4.0.block.1"])
    names = [name for name, m in model.named_modules() if isinstance(m, CamDrop2d)]
    # A plain Sequential (or a subclass running Sequential.forward) gives its output from its last
    # child, which gets the hook: features.6 -> features.6.3, a Conv2dNormActivation -> its activation.
    assert names == ["features.4.0.block.1.2.camdrop", "features.6.3.camdrop"]
    assert [(l.drop_prob, l.block_size) for l in ck.camdrop_layers(model)] == [(0.1, 5), (0.4, 3)]
    # Outside the known stages (the head conv): full rate, block 7; a block_size given applies everywhere.
    model = ck.convert(plain("tv_efficientnet_b0"), 0.4, where="features.8")
    assert [(l.drop_prob, l.block_size) for l in ck.camdrop_layers(model)] == [(0.4, 7)]
    model = ck.convert(plain("tv_efficientnet_b0"), 0.4, block_size=2, stage_scaling=False)
    assert {(l.drop_prob, l.block_size, l.drop_prob_scale) for l in ck.camdrop_layers(model)} == {(0.4, 2, 1.0)}


def test_set_drop_prob_keeps_the_stage_ratio_and_options_reach_the_layers():
    model = ck.convert(plain("timm_regnetx_002"), 0.2, gamma_mode="dropblock", missing_targets="skip")
    ck.set_drop_prob(model, 0.4)
    assert sorted({l.drop_prob for l in ck.camdrop_layers(model)}) == [0.1, 0.4]
    assert all(l.gamma_mode == "dropblock" and l.missing_targets == "skip" for l in ck.camdrop_layers(model))


def test_classifier_override():
    model = plain("tv_efficientnet_b0")
    linear = model.classifier[1]
    converted = ck.convert(copy.deepcopy(model), 0.1, classifier="classifier.1")
    assert all(l.classifier is converted.classifier[1] for l in ck.camdrop_layers(converted))
    converted = ck.convert(model, 0.1, classifier=linear)
    assert all(l.classifier is linear for l in ck.camdrop_layers(converted))
    # A classifier outside the model (a linear probe trained beside it) is taken as it is.
    probe = nn.Linear(1280, CLASSES)
    converted = ck.convert(plain("tv_efficientnet_b0"), 0.1, classifier=probe)
    assert all(l.classifier is probe for l in ck.camdrop_layers(converted))


def test_convert_resnet_is_a_preset_of_convert():
    for name in ("timm_resnet18", "tv_resnet18"):
        a = ck.convert_resnet(plain(name), drop_prob=0.3)
        b = ck.convert(plain(name), 0.3)
        assert [n for n, m in a.named_modules() if isinstance(m, CamDrop2d)] == \
               [n for n, m in b.named_modules() if isinstance(m, CamDrop2d)]
        assert [(l.drop_prob, l.block_size) for l in ck.camdrop_layers(a)] == \
               [(l.drop_prob, l.block_size) for l in ck.camdrop_layers(b)]


def test_copies_rebind_hooks_and_classifier():
    model = ck.convert(plain("seq_cnn_1d"), 0.5)
    twin = copy.deepcopy(model).train()
    assert all(l.classifier is twin.fc for l in ck.camdrop_layers(twin))
    x, y = batch("seq_cnn_1d")
    with ck.targets(twin, y):
        twin(x)
    assert all(l.last_dropped is not None for l in ck.camdrop_layers(twin))
    assert all(l.last_dropped is None for l in ck.camdrop_layers(model))


def test_errors_say_what_to_pass():
    class NoStages(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Conv2d(3, 8, 3)
            self.out = nn.Linear(8, 2)

        def forward(self, x):
            return self.out(self.body(x).mean((2, 3)))

    torch.manual_seed(0)
    with pytest.raises(ValueError, match=r"cannot find the stages of NoStages.*pass where=.*'body'"):
        ck.convert(NoStages(), 0.1)
    with pytest.raises(ValueError, match=r"'nope\*' matches no module of NoStages .*'body'"):
        ck.convert(NoStages(), 0.1, where="nope*")
    with pytest.raises(ValueError, match="cannot find the classifier .* pass classifier=.*guidance='self'"):
        ck.convert(nn.Sequential(nn.Conv2d(3, 4, 3)), 0.1, where="0")
    with pytest.raises(ValueError, match=r"ResNet\.get_classifier\(\)\) is Identity.*num_classes=0.*pass classifier=.*"
                                         r"guidance='self'"):
        ck.convert(timm.create_model("resnet18", num_classes=0), 0.1)
    with pytest.raises(ValueError, match="cannot tell the rank .* pass rank="):
        ck.convert(nn.Sequential(nn.GELU(), nn.Conv2d(3, 3, 3), nn.Linear(3, 2)), 0.1, where="0")
    with pytest.raises(ValueError, match="asks for the last 9 stages, but ConvNeXt has 4"):
        ck.convert(plain("timm_convnext_nano"), 0.1, where=9)
    with pytest.raises(TypeError, match="where must be"):
        ck.convert(plain("tv_resnet18"), 0.1, where=3.5)
    with pytest.raises(ValueError, match="not a valid regex"):
        ck.convert(plain("tv_resnet18"), 0.1, where="re:(")
    with pytest.raises(TypeError, match="stage_scaling"):
        ck.convert(plain("tv_resnet18"), 0.1, drop_prob_scale=0.5)
    model = ck.convert(plain("tv_resnet18"), 0.1)
    with pytest.raises(ValueError, match="convert a model once"):
        ck.convert(model, 0.1)
    model = ck.convert(plain("timm_resnet18"), 0.1)
    with pytest.raises(ValueError, match="convert a model once"):
        ck.convert_resnet(model)
    with pytest.raises(ValueError, match="a ModuleList .* name the module inside it"):
        ck.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ModuleList([nn.ReLU()]), nn.Linear(4, 2)), 0.1, where="1")
    # Nothing changes when a later place fails.
    model = plain("tv_resnet18")
    with pytest.raises(ValueError, match="ModuleList"):
        ck.convert(nn.Sequential(model, nn.ModuleList()), 0.1, where=["0.layer4.0.bn1", "1"])
    assert not ck.camdrop_layers(model)


def test_readme_convert_examples():
    """The README's convert snippet (notes/readme_convert_and_recipes.md), line for line."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_nano", pretrained=False, num_classes=100)
    ck.convert(model, drop_prob=0.1)
    names = [p.name for p in ck.conversion_places(timm.create_model("convnext_nano"))]
    assert names == [f"stages.2.blocks.{i}" for i in range(8)] + ["stages.3.blocks.0", "stages.3.blocks.1"]
    assert all(l.classifier is model.head.fc for l in ck.camdrop_layers(model))

    video = torchvision.models.video.r3d_18(num_classes=400)
    ck.convert(video, drop_prob=0.1)
    assert [type(l) for l in ck.camdrop_layers(video)] == [CamDrop3d] * 4

    last = ck.convert(timm.create_model("efficientnet_b0"), drop_prob=0.1, where=1)
    globbed = ck.convert(timm.create_model("efficientnet_b0"), drop_prob=0.1, where="blocks.5.*")
    classed = ck.convert(timm.create_model("efficientnet_b0"), drop_prob=0.1, where="blocks.[!0-4].*")
    regexed = ck.convert(torchvision.models.efficientnet_b0(), drop_prob=0.1, where=r"re:features\.(6|7)\.\d+")
    dense = ck.convert(torchvision.models.densenet121(), drop_prob=0.1, where=1)
    assert [len(ck.camdrop_layers(m)) for m in (last, globbed, classed, regexed, dense)] == [5, 4, 5, 5, 16]
    assert {p.name.rpartition(".")[0] for p in ck.conversion_places(dense)} == {"features.denseblock3",
                                                                                 "features.denseblock4"}
