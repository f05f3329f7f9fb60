"""``convert`` across the model zoo: the families a sweep of timm and torchvision models found
converted wrongly, to nothing, or with an error that did not say what to do.

Each case here failed before its fix: TResNet (a feature level at the model itself), RDNet (a
container subclass that iterates itself took a ``camdrop`` child), Inception (a layer after each
parallel branch), CaiT (the class token counted in blocks that do not carry it), BEiT / EVA
(blocks in a ModuleList), torchvision GoogLeNet / Inception3 / ShuffleNetV2 / MNASNet (no stages
found), Swin and other models without conv stages (converted to no layer, silently), PiT and
PVT (a layer after a module that returns tokens or a tuple: a bare TypeError at the first
forward), MLP heads (refused without the way round that needs no head), and models whose blocks
keep (N, H, W, C) maps: MambaOut was converted and "dropped" along the wrong axes (H taken for the
channels) without an error; Swin and Sequencer were converted to nothing.

Models that only need their structure are built on the meta device.
"""
import copy
import re
import warnings

import pytest
import torch
from torch import nn

import camdrop_kernels as ck

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
tv = torchvision.models

CLASSES = 5


def meta_timm(name, **kwargs):
    with torch.device("meta"):
        return timm.create_model(name, **{"num_classes": CLASSES, **kwargs})


def meta_tv(name, **kwargs):
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (GoogLeNet's and Inception's init-weights notices)
        return tv.get_model(name, weights=None, num_classes=CLASSES, **kwargs)


def train_step_drops(model, size, seed=0, **convert_kwargs):
    """Convert ``model``, run one training step inside ``targets``; every layer ran, the layers
    dropped something, and eval mode equals the unconverted model with the trained weights."""
    torch.manual_seed(seed)
    plain = copy.deepcopy(model)
    ck.convert(model, drop_prob=0.3, **convert_kwargs)
    layers = ck.camdrop_layers(model)
    assert layers
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(seed))
    y = torch.tensor([1, 3])
    model.train()
    with ck.targets(model, y):
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()
    fractions = [float(layer.last_dropped_fraction) for layer in layers]
    assert all(layer.last_dropped is not None for layer in layers)
    assert sum(fractions) > 0, fractions
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))
    return layers


# -- stages and blocks ---------------------------------------------------------------------------
def test_a_feature_level_at_the_model_itself_is_no_stage():
    # TResNet's feature_info starts with '' (its space-to-depth stem runs in the model's forward)
    model = meta_timm("tresnet_m")
    assert model.feature_info[0]["module"] == ""
    places = ck.conversion_places(model)
    assert {p.name.split(".")[1] for p in places} == {"layer3", "layer4"}
    assert {p.stage for p in places} == {0, 1}


def test_a_container_that_iterates_itself_gets_the_layers_on_its_blocks():
    # timm RDNet's DenseStage is an nn.Sequential with its own forward, iterating its children: a
    # `camdrop` child would be run on its list of features. The layers go on its dense blocks.
    model = meta_timm("rdnet_tiny")
    places = [p.name for p in ck.conversion_places(model)]
    assert places and all(".dense_block" in name for name in places)
    for name in places:
        parent = model.get_submodule(name.rpartition(".")[0])
        assert not isinstance(parent, nn.Sequential) or type(parent).forward is not nn.Sequential.forward


def test_rdnet_trains_and_drops():
    torch.manual_seed(0)
    train_step_drops(timm.create_model("rdnet_tiny", num_classes=CLASSES), (96, 96))


@pytest.mark.parametrize("build", [lambda: meta_timm("inception_v3"), lambda: meta_tv("inception_v3")],
                         ids=["timm", "torchvision"])
def test_inception_modules_are_the_blocks_not_their_branches(build):
    places = [p.name for p in ck.conversion_places(build())]
    assert places == ["Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]


@pytest.mark.parametrize("name,expected", [
    ("googlenet", ["inception4a", "inception4b", "inception4c", "inception4d", "inception4e", "inception5a",
                   "inception5b"]),
    ("shufflenet_v2_x0_5", [f"stage3.{i}" for i in range(8)] + [f"stage4.{i}" for i in range(4)]),
    ("mnasnet0_5", ["layers.10.0", "layers.10.1", "layers.10.2", "layers.11.0", "layers.11.1", "layers.12.0",
                    "layers.12.1", "layers.12.2", "layers.12.3", "layers.13.0"]),
])
def test_torchvision_models_whose_trunk_is_their_children(name, expected):
    places = ck.conversion_places(meta_tv(name))
    assert [p.name for p in places] == expected
    # the last stage is stage 0; the aux heads (a Linear inside) are never a place
    assert places[-1].stage == 0 and all("aux" not in p.name.lower() for p in places)


@pytest.mark.parametrize("name,size", [("shufflenet_v2_x0_5", (128, 128)), ("googlenet", (128, 128))])
def test_torchvision_trunk_models_train_and_drop(name, size):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
        model = tv.get_model(name, weights=None, num_classes=CLASSES, **kwargs)
    train_step_drops(model, size)


# -- vision transformers ------------------------------------------------------------------------
def test_cait_blocks_carry_no_class_token():
    # CaiT adds its class token in the class-attention blocks after `blocks`
    model = meta_timm("cait_xxs24_224")
    places = ck.conversion_places(model)
    assert places and all(p.tokens == (0, (14, 14)) for p in places)


@pytest.mark.parametrize("name", ["beit_base_patch16_224", "eva02_tiny_patch14_224"])
def test_vits_with_blocks_in_a_module_list(name):
    model = meta_timm(name)
    assert isinstance(model.blocks, nn.ModuleList)
    places = ck.conversion_places(model)
    depth = len(model.blocks)
    assert [p.name for p in places] == [f"blocks.{i}" for i in range(depth - depth // 3, depth)]
    assert all(p.tokens is not None and p.tokens[0] == 1 for p in places)


def test_eva_trains_and_drops_with_self_guidance():
    torch.manual_seed(0)
    layers = train_step_drops(timm.create_model("eva02_tiny_patch14_224", num_classes=CLASSES), (224, 224))
    assert all(layer.guidance == "self" for layer in layers)


# -- never converted to nothing; errors that name the place ----------------------------------------
@pytest.mark.parametrize("build", [lambda: meta_timm("mixer_s32_224"), lambda: meta_timm("resmlp_12_224"),
                                   lambda: meta_timm("levit_128s"), lambda: meta_timm("swinv2_cr_tiny_224")],
                         ids=["mixer", "resmlp", "levit", "swinv2-cr"])
@pytest.mark.parametrize("guidance", ["classifier", "self"])
def test_models_without_conv_stages_are_refused_not_left_unconverted(build, guidance):
    model = build()
    with pytest.raises(ValueError, match="found no conv blocks in the last 2 stages of"):
        ck.convert(model, guidance=guidance)
    assert not ck.camdrop_layers(model)


class TupleBlock(nn.Module):
    """A block returning (map, extra), as PiT's transformer stages return (tokens, class tokens)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x), x.mean()


class TokenBlock(nn.Module):
    """A block returning (N, L, C) tokens, as PVT's blocks do inside a conv-stemmed stage."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x).flatten(2).transpose(1, 2)


@pytest.mark.parametrize("block,got", [(TupleBlock, "a tuple, not a feature map"),
                                       (TokenBlock, r"a \(2, 36, 4\) tensor. If it is a map of another rank, pass "
                                                    r"convert rank=1")])
def test_a_layer_after_a_module_that_returns_no_map_names_the_place(block, got):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), block())
    ck.convert(model, where="1", guidance="self")
    x = torch.randn(2, 3, 6, 6)
    with pytest.raises(ValueError, match=rf"CamDrop layer after '1' expects an \(N, C, H, W\) input but that module "
                                         rf"returned {got}"):
        with ck.targets(model, torch.tensor([0, 1])):
            model.train()(x)
    model.eval()(x)  # eval passes whatever the module returns


@pytest.mark.parametrize("name,side,stages", [("pvt_v2_b0", "feat_size", "['stages.2', 'stages.3']"),
                                               ("xcit_nano_12_p16_224", "H, W", None)])
def test_blocks_that_take_their_grid_are_refused_at_convert(name, side, stages):
    """PVT v2's and XCiT's blocks take the grid's size and return tokens: convert refuses them at
    once (they failed at the first training forward), naming the stages to use where there are
    some; PVT v2's stages end with maps and work as places."""
    hint = re.escape(f"where={stages}") if stages else "name modules whose outputs are feature maps"
    with pytest.raises(ValueError, match=rf"take {side} beside their input .* tokens \(N, L, C\).*{hint}"):
        ck.convert(meta_timm(name), guidance="self")
    if stages:
        torch.manual_seed(0)
        model = ck.convert(timm.create_model(name, num_classes=CLASSES), 0.5, where=eval(stages), guidance="self")
        model.train()(torch.randn(4, 3, 128, 128)).sum().backward()  # (8x8 and 4x4 maps)
        assert [float(layer.last_dropped.sum()) > 0 for layer in ck.camdrop_layers(model)] == [True, True]


def test_pit_names_its_stage():
    torch.manual_seed(0)
    model = timm.create_model("pit_ti_224", num_classes=CLASSES)
    ck.convert(model)
    with pytest.raises(ValueError, match=r"CamDrop layer after 'transformers\.\d' .* returned a tuple"):
        with ck.targets(model, torch.tensor([0, 1])):
            model.train()(torch.randn(2, 3, 224, 224))


# -- heads ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", [lambda: meta_timm("mobilenetv3_small_050"), lambda: meta_tv("mobilenet_v3_small"),
                                   lambda: meta_tv("vgg11_bn"), lambda: meta_timm("hgnetv2_b0")],
                         ids=["timm mobilenetv3", "torchvision mobilenet_v3", "vgg", "hgnetv2"])
def test_head_refusals_say_self_guidance_needs_no_head(build):
    with pytest.raises(ValueError, match=r"or convert\(model, guidance='self'\)"):
        ck.convert(build())


def test_mobilenetv3_trains_and_drops_with_self_guidance():
    torch.manual_seed(0)
    train_step_drops(timm.create_model("mobilenetv3_small_050", num_classes=CLASSES), (128, 128), guidance="self")


# -- (N, H, W, C) maps: Swin, SwinV2, MambaOut, Sequencer ----------------------------------------------
@pytest.mark.parametrize("build,stages", [
    (lambda: meta_timm("swin_tiny_patch4_window7_224"), ("layers.2.blocks", 6, "layers.3.blocks", 2)),
    (lambda: meta_timm("swinv2_tiny_window8_256"), ("layers.2.blocks", 6, "layers.3.blocks", 2)),
    (lambda: meta_timm("mambaout_femto"), ("stages.2.blocks", 9, "stages.3.blocks", 3)),
    (lambda: meta_timm("sequencer2d_s"), ("stages.2.blocks", 8, "stages.3.blocks", 3)),
    (lambda: meta_tv("swin_t"), ("features.5", 6, "features.7", 2)),
], ids=["swin", "swinv2", "mambaout", "sequencer", "torchvision swin_t"])
def test_models_with_nhwc_maps_get_grid_places(build, stages):
    first, n1, last, n0 = stages
    places = ck.conversion_places(build())
    assert [p.name for p in places] == [f"{first}.{i}" for i in range(n1)] + [f"{last}.{i}" for i in range(n0)]
    assert all(p.nhwc and p.tokens is None and p.rank == 2 for p in places)
    assert [p.stage for p in places] == [1] * n1 + [0] * n0


def test_named_places_in_an_nhwc_model_are_its_blocks_and_stages_only():
    swin = meta_timm("swin_tiny_patch4_window7_224")
    places = ck.conversion_places(swin, where=["layers.3", "layers.2.blocks", "layers.2.blocks.1"])
    assert [(p.name, p.nhwc, p.stage) for p in places] == [("layers.2.blocks", True, 1), ("layers.2.blocks.1", True, 1),
                                                            ("layers.3", True, 0)]
    # a Swin's stem, merging and norms output (N, H, W, C), its convs (N, C, H, W): not guessed
    for name in ("patch_embed", "patch_embed.proj", "layers.2.downsample", "layers.2.blocks.0.norm1", "norm"):
        with pytest.raises(ValueError, match=rf"knows the layout of its blocks and stages only, and '{name}'"):
            ck.conversion_places(swin, where=name)
    # TinyViT's attention stages permute back to (N, C, H, W): their blocks are grids, the stage is not
    tiny = meta_timm("tiny_vit_5m_224")
    assert [p.nhwc for p in ck.conversion_places(tiny, where=["stages.1.blocks", "stages.1.blocks.0"])] == [True, True]
    with pytest.raises(ValueError, match="'stages.1' is neither"):
        ck.conversion_places(tiny, where="stages.1")
    for name in ("features.0", "features.2"):  # torchvision Swin's stem and patch merging
        with pytest.raises(ValueError, match="is neither"):
            ck.conversion_places(meta_tv("swin_t"), where=name)


def test_grid_map_is_camdrop_on_the_channels_last_view():
    grid = torch.randn(3, 7, 9, 16)  # (N, H, W, C)
    layer = ck.CamDrop2d(0.5, 3, guidance="self").train()
    wrapped = ck.tokens.GridMap(layer)
    torch.manual_seed(11)
    got = wrapped(grid)
    torch.manual_seed(11)
    expected = layer(grid.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    assert got.shape == grid.shape and torch.equal(got, expected)
    assert float(layer.last_dropped_fraction) > 0
    dropped = (got == 0) & (grid != 0)
    # whole (h, w) blocks of some channels: a channel is either untouched or has a block dropped
    assert dropped.any() and not dropped.all(dim=(1, 2)).any()
    layer.eval()
    assert wrapped(grid) is grid


@pytest.mark.parametrize("guidance", [None, "classifier"])
def test_swin_trains_and_drops(guidance):
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", num_classes=CLASSES)
    kwargs = {} if guidance is None else {"guidance": guidance}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layers = train_step_drops(model, (224, 224), **kwargs)
    # transformer-style maps default to self guidance; classifier guidance is given, with a warning
    assert {layer.guidance for layer in layers} == {guidance or "self"}
    assert any("read the label off" in str(w.message) for w in caught) == (guidance == "classifier")
    assert sum(isinstance(m, ck.tokens.GridMap) for m in model.modules()) == len(layers) == 8


def test_mambaout_drops_along_the_right_axes():
    torch.manual_seed(0)
    model = timm.create_model("mambaout_femto", num_classes=CLASSES)
    layers = train_step_drops(model, (224, 224), guidance="self")
    assert len(layers) == 12


# -- from a hostile review of the above ------------------------------------------------------------
def test_fx_feature_extraction_of_a_converted_model_in_training_mode():
    from torchvision.models.feature_extraction import create_feature_extractor

    torch.manual_seed(0)
    model = ck.convert(tv.mobilenet_v2(num_classes=CLASSES)).train()  # (hooks on blocks fx traces into)
    extractor = create_feature_extractor(model, return_nodes={"features.17": "out"})
    with ck.targets(extractor, torch.tensor([0, 1])):
        out = extractor(torch.randn(2, 3, 64, 64))["out"]
    assert out.shape == (2, 320, 2, 2)
    torch.fx.symbolic_trace(model)


def test_sequential_subclasses_with_the_plain_forward_stay_one_place():
    # timm StarNet's ConvBN and torchvision's Conv2dNormActivation: the layer after the norm, not on the conv
    places = [p.name for p in ck.conversion_places(meta_timm("starnet_s1"))]
    assert "stages.2.0" in places and not any(name.endswith(".conv") for name in places)
    stem = ck.conversion_places(meta_tv("convnext_tiny"), where=4)[0]
    assert stem.name == "features.0"


@pytest.mark.parametrize("name", ["coat_tiny", "coat_lite_tiny"])
def test_feature_info_naming_one_module_twice_is_read(name):
    try:
        places = ck.conversion_places(meta_timm(name))
    except ValueError as e:  # (refused with a message, never an IndexError)
        assert "where=" in str(e)
    else:
        assert places


def test_convit_blocks_before_its_class_token_carry_none():
    model = meta_timm("convit_tiny")
    places = ck.conversion_places(model)
    local = model.local_up_to_layer
    assert [p.tokens[0] for p in places] == [0 if int(p.name.split(".")[1]) < local else 1 for p in places]
    assert {p.tokens[0] for p in places} == {0, 1}


def test_convit_trains_and_drops():
    torch.manual_seed(0)
    train_step_drops(timm.create_model("convit_tiny", num_classes=CLASSES), (224, 224))


def test_tiny_vit_attention_stages_are_nhwc():
    places = ck.conversion_places(meta_timm("tiny_vit_5m_224"))
    assert [p.name for p in places] == [f"stages.2.blocks.{i}" for i in range(6)] + \
        [f"stages.3.blocks.{i}" for i in range(2)]
    assert all(p.nhwc for p in places)


def test_vits_without_a_linear_head_take_self_guidance_and_refuse_the_classifiers():
    headless = meta_timm("vit_tiny_patch16_224", num_classes=0)
    assert len(ck.camdrop_layers(ck.convert(copy.deepcopy(headless)))) == 4  # (self guidance, the default)
    with pytest.raises(ValueError, match=r"has no linear head .* Use guidance='self'"):
        ck.convert(headless, guidance="classifier")
    with pytest.raises(ValueError, match=r"global_pool='map'.* Use guidance='self'"):
        ck.convert(meta_timm("vit_tiny_patch16_224", global_pool="map"), guidance="classifier")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hidden = meta_tv("vit_b_16", representation_size=64)
    with pytest.raises(ValueError, match="a hidden pre-logits layer"):
        ck.convert(hidden, guidance="classifier")


def test_subclasses_of_torchvision_trunk_models_get_their_stages():
    from torchvision.models import quantization

    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = quantization.googlenet(weights=None, num_classes=CLASSES, init_weights=False)
    assert [p.name for p in ck.conversion_places(model)][-2:] == ["inception5a", "inception5b"]


# -- unconvert: the plain model back (deployment: torch.jit.script) ----------------------------------
@pytest.mark.parametrize("build,size", [
    (lambda: tv.resnet18(num_classes=CLASSES), (64, 64)),
    (lambda: timm.create_model("resnet18", num_classes=CLASSES), (64, 64)),  # drop_block slots
    (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=CLASSES), (224, 224)),  # TokenMap hooks
    (lambda: timm.create_model("swin_tiny_patch4_window7_224", num_classes=CLASSES), (224, 224)),  # GridMap
], ids=["torchvision resnet18", "timm resnet18", "vit", "swin"])
def test_unconvert_gives_the_plain_model_back(build, size):
    torch.manual_seed(0)
    model = build()
    plain = copy.deepcopy(model)
    ck.convert(model, drop_prob=0.3)
    x = torch.randn(2, 3, *size)
    with ck.targets(model.train(), torch.tensor([0, 1])):
        model(x).sum().backward()  # (a training step: the layers ran)
    assert ck.unconvert(model) is model
    assert not ck.camdrop_layers(model)
    assert not any(isinstance(h, ck.placement.CamDropAfter) for m in model.modules() for h in m._forward_hooks.values())
    assert "camdrop" not in dict(model.named_modules()) and not any(".camdrop" in n for n, _ in model.named_modules())
    assert model.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    a = model.train()(x)
    torch.manual_seed(1)
    assert torch.equal(a, plain.train()(x))  # training mode too: nothing of CamDrop left
    with pytest.raises(ValueError, match="no CamDrop layers"):
        with ck.targets(model, torch.tensor([0, 1])):
            pass


@pytest.mark.parametrize("build", [lambda: tv.resnet18(num_classes=CLASSES),
                                   lambda: timm.create_model("resnet18", num_classes=CLASSES)],
                         ids=["torchvision", "timm"])
def test_a_converted_model_scripts_after_unconvert(build):
    torch.manual_seed(0)
    model = ck.convert(build()).eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(Exception):
        torch.jit.script(model)  # (the layers' Python and the hooks are not TorchScript)
    scripted = torch.jit.script(ck.unconvert(copy.deepcopy(model)))
    assert torch.equal(scripted(x), model(x))


def test_unconvert_after_a_module_swap_leaves_no_camdrop_children():
    model = ck.convert(tv.resnet18(num_classes=CLASSES))
    model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # (keeps the camdrop children, drops the hooks)
    ck.unconvert(model)
    assert not any(name.endswith("camdrop") for name, _ in model.named_modules())
