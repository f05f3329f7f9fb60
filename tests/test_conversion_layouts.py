"""``convert`` safe in the field (issue 21, items 4-7): classifier layouts, ``where=`` globs,
the stages of ``features`` models, and timm's own DropBlock.

Models that only need their structure are built on the meta device (no weights, no time).
"""
import fnmatch
import random
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import camdrop_kernels as ck
from camdrop_kernels.conversion import _pattern
from camdrop_kernels.heads import HeadLayout, head_layout
from camdrop_kernels.nn import CamDrop2d

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
tv = torchvision.models

CLASSES = 6


def meta(build, *args, **kwargs):
    """The model on the meta device; on the CPU for builders that read values (torchvision's RegNet
    and MaxViT compute their widths with tensors)."""
    try:
        with torch.device("meta"):
            return build(*args, **kwargs)
    except NotImplementedError:
        torch.manual_seed(0)
        return build(*args, **kwargs)


def timm_resnet(global_pool, **kwargs):
    return timm.create_model("resnet18", global_pool=global_pool, num_classes=CLASSES, **kwargs)


# ---------------------------------------------------------------------------------------------
# 4. Classifier layouts
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", ["avg", "max", "avgmax", "fast", "fastavg", "fastmax", "fastavgmax"])
def test_timm_pools_with_one_value_per_channel_map_each_feature_to_its_channel(pool):
    layout = head_layout(meta(timm_resnet, pool))
    assert layout == HeadLayout("fc", 512, 512, 1, 1, f"global_pool: SelectAdaptivePool2d(pool_type={pool!r})")
    assert layout.kind == "identity"


@pytest.mark.parametrize("pool", ["catavgmax", "fastcatavgmax"])
def test_timm_catavgmax_is_two_copies_of_the_channels(pool):
    layout = head_layout(meta(timm_resnet, pool))
    assert (layout.name, layout.channels, layout.features, layout.copies, layout.cells) == ("fc", 512, 1024, 2, 1)
    assert layout.kind == "concat"
    # The same for EfficientNet, whose pooled map is conv_head's 1280 channels.
    layout = head_layout(meta(timm.create_model, "efficientnet_b0", global_pool=pool))
    assert (layout.name, layout.channels, layout.features, layout.copies) == ("classifier", 1280, 2560, 2)


def test_fold_sums_each_channels_own_weights():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(5, 2 * 8, generator=g, dtype=torch.float64)
    concat = HeadLayout("fc", 8, 16, copies=2)
    assert torch.equal(concat.fold(weight), weight[:, :8] + weight[:, 8:])  # [avg(C), max(C)]: c and c + C
    # The old grouping averaged neighbours: channel 0 got the mean of features 0 and 1, i.e. of
    # channel 0's and channel 1's avg weights; the fold never mixes two channels.
    assert not torch.allclose(ck.channel_importance(weight, torch.arange(5), 8) * 2, concat.fold(weight))
    cells = HeadLayout("classifier", 4, 16, cells=4)  # channel-major flatten of a 2x2 grid
    assert torch.equal(cells.fold(weight), weight.view(5, 4, 4).sum(-1))
    both = HeadLayout("fc", 2, 16, copies=2, cells=4)
    assert torch.equal(both.fold(weight), weight.view(5, 2, 2, 4).sum((1, 3)))
    identity = HeadLayout("fc", 16, 16)
    assert identity.fold(weight) is weight
    rows = weight[torch.tensor([3, 1])]  # the rows a batch picks fold the same way
    assert torch.equal(concat.fold(rows), concat.fold(weight)[torch.tensor([3, 1])])
    conv = torch.randn(5, 16, 1, 1, generator=g)  # a 1x1 conv classifier's weight is flattened first
    assert torch.equal(identity.fold(conv), conv.flatten(1))


def _capture_layer_inputs(layers):
    """Forward pre-hooks recording each layer's input and the RNG state its seed is drawn from."""
    seen = {}

    def hook(layer, args):
        seen[layer] = (args[0].detach().clone(), torch.get_rng_state())

    return seen, [layer.register_forward_pre_hook(hook) for layer in layers]


def test_catavgmax_guides_each_channel_by_its_own_weights():
    """The end result: a converted catavgmax model drops exactly what an explicitly guided layer
    drops with alpha = the sum of each channel's avg and max weights (the mean gives the same
    mask: a power-of-two factor scales the CAM exactly)."""
    torch.manual_seed(0)
    model = ck.convert(timm_resnet("catavgmax"), 0.5, where=1).train()  # layer4: the pooled map's 512 channels
    layers = ck.camdrop_layers(model)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 128, 128, generator=g), torch.randint(0, CLASSES, (4,), generator=g)
    seen, hooks = _capture_layer_inputs(layers)
    outputs = {}
    for layer in layers:
        hooks.append(layer.register_forward_hook(lambda m, a, out: outputs.__setitem__(m, out.detach().clone())))
    with ck.targets(model, y):
        model(x)
    for h in hooks:
        h.remove()
    weight = model.fc.weight.detach()
    alpha = (weight[:, :512] + weight[:, 512:])[y]
    for layer in layers:
        inp, state = seen[layer]
        torch.set_rng_state(state)
        expected = CamDrop2d(layer.drop_prob, layer.block_size).train()(inp, ck.class_activation_map(inp, alpha), alpha)
        assert torch.equal(outputs[layer], expected)
    assert sum(float(layer.last_dropped.sum()) for layer in layers) > 0


@pytest.mark.parametrize("build,hidden", [
    (lambda: tv.vgg11(), "classifier.0: Linear(25088 -> 4096)"),
    (lambda: tv.alexnet(), "classifier.1: Linear(9216 -> 4096)"),
    (lambda: tv.mobilenet_v3_small(), "classifier.0: Linear(576 -> 1024)"),
    (lambda: tv.mobilenet_v3_large(), "classifier.0: Linear(960 -> 1280)"),
    (lambda: tv.maxvit_t(), "classifier.3: Linear(512 -> 512)"),
    (lambda: timm.create_model("mobilenetv3_small_050"), "conv_head: Conv2d(288 -> 1024, 1x1)"),
    (lambda: timm.create_model("convnext_nano", head_hidden_size=256), "head.pre_logits.fc: Linear(640 -> 256)"),
], ids=["tv_vgg11", "tv_alexnet", "tv_mobilenet_v3_small", "tv_mobilenet_v3_large", "tv_maxvit_t",
        "timm_mobilenetv3", "timm_convnext_head_hidden_size"])
def test_mlp_heads_are_refused_with_what_to_do(build, hidden):
    """A hidden layer between the pooling and the classifier: no channel has weights of its own."""
    model = meta(build)
    message = (rf"reads a hidden layer \({re.escape(hidden)}\) after the pooling .* Replace the head by global "
               r"pooling and one linear layer .* or pass classifier= a linear layer that reads the pooled channels")
    with pytest.raises(ValueError, match=message):
        head_layout(model)
    conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    with pytest.raises(ValueError, match=message):
        ck.convert(model, where=conv)
    with pytest.raises(ValueError, match="reads a hidden layer"):  # naming the MLP's last layer changes nothing
        ck.convert(model, where=conv, classifier=ck.find_classifier(model))
    assert not ck.camdrop_layers(model)


def test_mlp_head_replaced_by_a_linear_one_converts():
    """What the refusal advises, done: MobileNetV3 with one linear layer on the pooled channels."""
    model = tv.mobilenet_v3_small(num_classes=CLASSES)
    with pytest.raises(ValueError, match="hidden layer"):
        ck.convert(model)
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(576, CLASSES))
    ck.convert(model)
    assert head_layout(model) == HeadLayout("classifier.1", 576, 576, 1, 1, "avgpool: AdaptiveAvgPool2d(output_size=1)")
    assert all(layer.classifier is model.classifier[1] for layer in ck.camdrop_layers(model))


@pytest.mark.parametrize("build,name,channels,pool", [
    (lambda: tv.resnet18(), "fc", 512, "avgpool: AdaptiveAvgPool2d(output_size=(1, 1))"),
    (lambda: tv.video.r3d_18(), "fc", 512, "avgpool: AdaptiveAvgPool3d(output_size=(1, 1, 1))"),
    (lambda: tv.efficientnet_b0(), "classifier.1", 1280, "avgpool: AdaptiveAvgPool2d(output_size=1)"),
    # (ConvNeXt: a LayerNorm2d and a Flatten between the pooling and the classifier)
    (lambda: tv.convnext_tiny(), "classifier.2", 768, "avgpool: AdaptiveAvgPool2d(output_size=1)"),
    (lambda: tv.regnet_y_400mf(), "fc", 440, "avgpool: AdaptiveAvgPool2d(output_size=(1, 1))"),
    (lambda: tv.googlenet(init_weights=False, aux_logits=False), "fc", 1024,
     "avgpool: AdaptiveAvgPool2d(output_size=(1, 1))"),
    (lambda: tv.densenet121(), "classifier", 1024, "pooled in forward"),  # F.adaptive_avg_pool2d after norm5
    (lambda: tv.mobilenet_v2(), "classifier.1", 1280, "pooled in forward"),
    (lambda: tv.shufflenet_v2_x0_5(), "fc", 1024, "pooled in forward"),
    (lambda: tv.mnasnet0_5(), "classifier.1", 1280, "pooled in forward"),
    (lambda: timm.create_model("convnext_nano"), "head.fc", 640,
     "head.global_pool: SelectAdaptivePool2d(pool_type='avg')"),  # NormMlpClassifierHead without a hidden layer
    (lambda: timm.create_model("regnetx_002"), "head.fc", 368,
     "head.global_pool: SelectAdaptivePool2d(pool_type='avg')"),  # ClassifierHead
    (lambda: timm.create_model("efficientnet_b0"), "classifier", 1280,
     "global_pool: SelectAdaptivePool2d(pool_type='avg')"),
    (lambda: timm.create_model("densenet121"), "classifier", 1024,
     "global_pool: SelectAdaptivePool2d(pool_type='avg')"),
], ids=["tv_resnet18", "tv_r3d_18", "tv_efficientnet_b0", "tv_convnext_tiny", "tv_regnet_y_400mf", "tv_googlenet",
        "tv_densenet121", "tv_mobilenet_v2", "tv_shufflenet", "tv_mnasnet", "timm_convnext_nano", "timm_regnetx_002",
        "timm_efficientnet_b0", "timm_densenet121"])
def test_linear_heads_on_pooled_channels_are_identity(build, name, channels, pool):
    model = meta(build)
    layout = head_layout(model)
    assert layout[:6] == (name, channels, channels, 1, 1, pool)
    # A LayerNorm between pooling and classifier (ConvNeXt's head norm) is recorded, its gain folded in.
    assert layout.norm == {("classifier.2", 768): "classifier.0", ("head.fc", 640): "head.norm"}.get((name, channels), "")


def test_a_head_norm_gain_is_folded_into_each_channel():
    """ConvNeXt's head: logits = W (g * norm(pool(x))) + b, so channel c's evidence is W[:, c] g[c]."""
    torch.manual_seed(0)
    model = timm.create_model("convnext_nano", num_classes=CLASSES)
    with torch.no_grad():
        model.head.norm.weight.uniform_(-2, 2)
    layout = head_layout(model)
    assert layout.norm == "head.norm"
    y = torch.tensor([1, 4])
    want = (model.head.fc.weight * model.head.norm.weight)[y]
    assert torch.equal(ck.guidance.importance(model.head.fc.weight, y, 640, layout, model.head.norm), want)


def test_a_linear_layer_on_a_flattened_grid_reads_consecutive_cells_of_each_channel():
    """VGG with one linear layer on its 7x7 pooled grid (channel-major flatten): channel c owns
    features 49c..49c+48, which the layers' grouping of consecutive features already reads."""
    model = meta(tv.vgg11)
    model.classifier = nn.Linear(512 * 49, CLASSES)
    layout = head_layout(model)
    assert layout == HeadLayout("classifier", 512, 512 * 49, 1, 49, "avgpool: AdaptiveAvgPool2d(output_size=(7, 7))")
    assert layout.kind == "cells"
    g = torch.Generator().manual_seed(0)
    weight, y = torch.randn(CLASSES, 512 * 49, generator=g, dtype=torch.float64), torch.tensor([0, 5, 2])
    assert torch.allclose(ck.channel_importance(weight, y, 512) * 49, layout.fold(weight)[y])
    # A flatten without a pooling module (nn.Sequential: conv, BN, ReLU, Flatten, Linear) reads the same.
    seq = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 2))
    assert head_layout(seq) == HeadLayout("4", 8, 8 * 36, 1, 36, "a flattened map")


@pytest.mark.parametrize("build,name,channels", [
    (lambda: tv.squeezenet1_0(), "classifier.1", 512),  # Conv2d(512, K, 1), ReLU, AdaptiveAvgPool2d
    (lambda: timm.create_model("resnetv2_50"), "head.fc", 2048),  # ClassifierHead(use_conv=True): BiT
    (lambda: timm.create_model("dla34"), "fc", 512),
], ids=["tv_squeezenet1_0", "timm_resnetv2_50", "timm_dla34"])
def test_conv_classifiers_map_each_channel_to_its_weights(build, name, channels):
    model = meta(build)
    classifier = ck.find_classifier(model)
    assert classifier is model.get_submodule(name) and classifier.weight.dim() == 4
    layout = head_layout(model)
    assert (layout.name, layout.channels, layout.features, layout.copies, layout.cells) == (name, channels, channels,
                                                                                             1, 1)


def test_squeezenet_converts_and_drops():
    torch.manual_seed(0)
    model = ck.convert(tv.squeezenet1_0(num_classes=CLASSES), 0.5, where=1).train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 3, 160, 160, generator=g), torch.randint(0, CLASSES, (4,), generator=g)
    with ck.targets(model, y):
        model(x)
    assert sum(float(layer.last_dropped.sum()) for layer in ck.camdrop_layers(model)) > 0


def test_an_mlp_head_in_the_features_sequential_is_refused():
    """The head inside the same Sequential as the convs (a one-Sequential model): still a head."""
    mlp = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, CLASSES))
    with pytest.raises(ValueError, match=r"reads a hidden layer \(5: Linear\(8 -> 16\)\) after the pooling \(3: "):
        ck.convert(mlp, where="0")
    body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, CLASSES))
    net = nn.Module()
    net.body = body
    assert head_layout(net, body[5]) == HeadLayout("body.5", 8, 8, 1, 1, "body.3: AdaptiveAvgPool2d(output_size=1)")


def test_a_head_without_pooling_is_refused():
    model = meta(timm.create_model, "resnet18", num_classes=CLASSES)
    model.reset_classifier(CLASSES, global_pool="")
    with pytest.raises(ValueError, match=r"does not pool \(global_pool: SelectAdaptivePool2d\(pool_type=''\)\).*"
                                         r"global_pool='avg'"):
        ck.convert(model)


class FunctionalPool(nn.Module):
    """Pools in forward (x.mean), then an optional hidden layer: what convert cannot see."""

    def __init__(self, hidden=False, concat=False):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.hidden = nn.Linear(8, 16) if hidden else None
        self.concat = concat
        self.fc = nn.Linear(16 if hidden or concat else 8, CLASSES)

    def forward(self, x):
        x = self.features(x)
        x = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1) if self.concat else x.mean((2, 3))
        return self.fc(F.relu(self.hidden(x)) if self.hidden is not None else x)


def test_functional_pooling():
    assert head_layout(FunctionalPool()) == HeadLayout("fc", 8, 8, 1, 1, "pooled in forward")
    with pytest.raises(ValueError, match=r"hidden: Linear\(8 -> 16\) between them may be a hidden layer .* Make "
                                         r"the pooling a module .* or pass classifier="):
        ck.convert(FunctionalPool(hidden=True), where="features")
    with pytest.raises(ValueError, match=r"it takes 16 features, the map before it has 8 channels, and no pooling "
                                         r"module says how they relate"):
        ck.convert(FunctionalPool(concat=True), where="features")
    # Naming the classifier takes it as given (the caller's call, as before this check).
    model = FunctionalPool(concat=True)
    ck.convert(model, where="features", classifier="fc")
    assert head_layout(model, model.fc, strict=False) is None and len(ck.camdrop_layers(model)) == 1


# ---------------------------------------------------------------------------------------------
# 5. where= globs
# ---------------------------------------------------------------------------------------------
def test_glob_character_classes_are_classes():
    model = meta(tv.resnet18)
    names = lambda where: [p.name for p in ck.conversion_places(model, where)]  # noqa: E731
    assert names("layer[2-4].?") == ["layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0", "layer4.1"]
    assert names("layer[!1-3]") == ["layer4"]
    assert names("layer[!1-24]") == ["layer3"]
    assert names("layer[13].0.bn[!1]") == ["layer1.0.bn2", "layer3.0.bn2"]
    assert names("layer4.?.conv[1-]") == ["layer4.0.conv1", "layer4.1.conv1"]  # a trailing '-' is itself
    with pytest.raises(ValueError, match=r"'layer\[4-2\]' matches no module"):  # a reversed range matches nothing
        names("layer[4-2]")
    # A negated class stays within one name segment, as ? does.
    assert not _pattern("layer4[!0]0").fullmatch("layer4.0")
    assert _pattern("layer4[.]0").fullmatch("layer4.0")  # (a class that names the dot matches it)


def test_glob_classes_match_as_fnmatch_within_a_segment():
    """Random globs over a small alphabet (ranges, negation, ']' first, '-' at the ends, '[' without
    a ']'): the same verdict as fnmatch.fnmatchcase on names without dots, seeded."""
    rng = random.Random(2019)
    pieces = ["a", "b", "1", "2", "-", "]", "!", "^", "[", "?", "*", "[a-c]", "[!1-2]", "[]a]", "[!]]", "[a-]",
              "[-1]", "[2-1]", "[^a]", "[!a-b2]", "[[]"]
    alphabet = "ab12-]!^[c"
    checked = 0
    for _ in range(3000):
        pattern = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 4)))
        for _ in range(5):
            name = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5)))
            assert bool(_pattern(pattern).fullmatch(name)) == fnmatch.fnmatchcase(name, pattern), (pattern, name)
            checked += 1
    assert checked == 15000


# ---------------------------------------------------------------------------------------------
# 6. Stages of torchvision `features` models
# ---------------------------------------------------------------------------------------------
STAGED = {
    # name: (build, input side, where=1 places, where=2 adds, number of stages)
    "vgg11": (tv.vgg11, 32, ["features.16", "features.18"], ["features.11", "features.13"], 5),
    "alexnet": (tv.alexnet, 64, ["features.6", "features.8", "features.10"], ["features.3"], 3),
    "squeezenet1_0": (tv.squeezenet1_0, 64, ["features.12"], ["features.7", "features.8", "features.9", "features.10"],
                      4),
    "densenet121": (tv.densenet121, 64, [f"features.denseblock4.denselayer{i}" for i in range(1, 17)],
                    [f"features.denseblock3.denselayer{i}" for i in range(1, 25)], 5),
    "mobilenet_v3_small": (tv.mobilenet_v3_small, 64, ["features.9", "features.10", "features.11"],
                           [f"features.{i}" for i in range(4, 9)], 5),
    "efficientnet_b0": (tv.efficientnet_b0, 64, ["features.6.0", "features.6.1", "features.6.2", "features.6.3",
                                                 "features.7.0"],
                        ["features.4.0", "features.4.1", "features.4.2", "features.5.0", "features.5.1",
                         "features.5.2"], 5),
}


@pytest.mark.parametrize("name", list(STAGED))
def test_features_stages_start_at_each_downsampling_child(name):
    build, side, last, before, count = STAGED[name]
    model = meta(build)
    assert [p.name for p in ck.conversion_places(model, 1)] == last
    assert [p.name for p in ck.conversion_places(model, 2)] == before + last
    assert len(ck.conversion_places(model, count)) > len(ck.conversion_places(model, 2))
    with pytest.raises(ValueError, match=f"has {count}"):
        ck.conversion_places(model, count + 1)
    assert {p.stage for p in ck.conversion_places(model, 2)} == {0, 1}


@pytest.mark.parametrize("name", list(STAGED))
def test_features_stages_are_resolution_levels(name):
    """A forward of the trunk alone: the places of one stage share one resolution, and each stage is
    at a lower resolution than the one before (the stem is the first)."""
    build, side, *_, count = STAGED[name]
    model = meta(build)
    model.features.to_empty(device="cpu")
    for module in model.features.modules():  # (finite values: the sizes are what matters)
        for tensor in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)):
            with torch.no_grad():
                tensor.fill_(0.5 if tensor.dim() else 1)
    sizes = {}
    hooks = [model.get_submodule(p.name).register_forward_hook(
        lambda m, a, out, n=p.name: sizes.__setitem__(n, tuple(out.shape[2:])))
        for p in ck.conversion_places(model, count)]
    with torch.no_grad():
        model.features.eval()(torch.ones(1, 3, side, side))
    for h in hooks:
        h.remove()
    by_stage = {}
    for place in ck.conversion_places(model, count):
        by_stage.setdefault(place.stage, set()).add(sizes[place.name])
    assert all(len(s) == 1 for s in by_stage.values()), by_stage
    levels = [by_stage[s].pop() for s in sorted(by_stage, reverse=True)]  # the stem first
    assert all(a[0] > b[0] for a, b in zip(levels, levels[1:])), levels


def test_timm_stages_unchanged():
    for name, first, count in (("resnet18", "layer3.0.drop_block", 4), ("convnext_nano", "stages.2.blocks.0", 10),
                               ("efficientnet_b0", "blocks.3.0", 11), ("regnetx_002", "s3.b1", 11)):
        places = ck.conversion_places(meta(timm.create_model, name))
        assert places[0].name == first and len(places) == count


# ---------------------------------------------------------------------------------------------
# 7. timm's own DropBlock
# ---------------------------------------------------------------------------------------------
def test_timm_dropblock_is_replaced_by_camdrop_with_a_warning():
    from timm.layers import DropBlock2d

    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=CLASSES, drop_block_rate=0.1)
    assert sum(isinstance(m, DropBlock2d) for m in model.modules()) == 4
    with pytest.warns(UserWarning, match=r"convert replaced 4 DropBlock layers by CamDrop in their slots "
                                         r"\(layer3.0.drop_block, .*drop_block_rate"):
        ck.convert(model, 0.2)
    assert not any(isinstance(m, DropBlock2d) for m in model.modules())
    assert [n for n, m in model.named_modules() if isinstance(m, CamDrop2d)] == [
        "layer3.0.drop_block", "layer3.1.drop_block", "layer4.0.drop_block", "layer4.1.drop_block"]
    assert [(l.drop_prob, l.block_size) for l in ck.camdrop_layers(model)] == [(0.05, 5)] * 2 + [(0.2, 3)] * 2
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, CLASSES, (2,), generator=g)
    with ck.targets(model.train(), y):
        model(x)
    assert sum(float(layer.last_dropped.sum()) for layer in ck.camdrop_layers(model)) > 0


def test_timm_dropblock_left_outside_the_converted_stages_is_named():
    from timm.layers import DropBlock2d

    model = timm.create_model("resnet18", num_classes=CLASSES, drop_block_rate=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ck.convert_resnet(model, stages=(4,))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert any("replaced 2 DropBlock layers" in m for m in messages), messages
    assert any("2 DropBlock layers outside the converted places still run beside CamDrop (layer3.0.drop_block, "
               "layer3.1.drop_block)" in m for m in messages), messages
    assert [isinstance(model.get_submodule(f"layer{s}.{b}.drop_block"), DropBlock2d) for s in (3, 4) for b in (0, 1)] \
        == [True, True, False, False]


def test_no_warning_without_dropblock():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ck.convert(meta(timm.create_model, "resnet18"))


def test_torchvision_dropblock_named_by_where_is_replaced():
    from torchvision.ops import DropBlock2d

    model = nn.Sequential(nn.Conv2d(3, 8, 3), DropBlock2d(0.1, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, CLASSES))
    with pytest.warns(UserWarning, match=r"replaced 1 DropBlock layer by CamDrop in their slots \(1\)"):
        ck.convert(model, where="1")
    assert isinstance(model[1], CamDrop2d)
