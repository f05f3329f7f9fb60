"""Vision transformers (issue 24, item 1): convert places CamDrop on the patch tokens of the last
blocks, viewed as a channels_last map, guided by the head (the final norm's gain folded in);
prefix tokens untouched, eval bit-identical, compile, checkpointing and schedules as for CNNs."""
import copy

import pytest
import torch
import torch.nn.functional as F

import camdrop_kernels as ck
from camdrop_kernels import reference
from camdrop_kernels.tokens import TokenMap

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
CLASSES = 5
SIZE, GRID = 96, 6  # 16-pixel patches: a 6x6 grid of patch tokens


def vit(kind):
    torch.manual_seed(0)
    if kind == "timm_vit":  # class token, final norm before the head
        return timm.create_model("vit_tiny_patch16_224", img_size=SIZE, num_classes=CLASSES)
    if kind == "timm_deit_distilled":  # class and distillation tokens
        return timm.create_model("deit_tiny_distilled_patch16_224", img_size=SIZE, num_classes=CLASSES)
    if kind == "timm_registers_avg":  # 4 register tokens, no class token, average pooling, fc_norm
        return timm.create_model("vit_tiny_patch16_224", img_size=SIZE, num_classes=CLASSES, reg_tokens=4,
                                 class_token=False, global_pool="avg")
    model = torchvision.models.vit_b_16(image_size=SIZE, num_classes=CLASSES)
    # torchvision zero-initialises the head: all channels and pixels tie (the SPEC's tie rule then
    # picks the lowest indices, on the border, where no block fits) until it learns. A trained head:
    torch.nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


KINDS = ["timm_vit", "timm_deit_distilled", "timm_registers_avg", "torchvision_vit_b_16"]
PREFIX = {"timm_vit": 1, "timm_deit_distilled": 2, "timm_registers_avg": 4, "torchvision_vit_b_16": 1}


def batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, SIZE, SIZE, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


@pytest.mark.parametrize("kind", KINDS)
def test_convert_places_token_maps_on_the_last_blocks(kind):
    model = vit(kind)
    plain = copy.deepcopy(model)
    places = ck.conversion_places(model)
    depth = 12
    assert len(places) == depth // 3 and all(p.tokens == (PREFIX[kind], (GRID, GRID)) for p in places)
    ck.convert(model, drop_prob=0.5)
    maps = [m for m in model.modules() if isinstance(m, TokenMap)]
    assert len(maps) == depth // 3 and len(ck.camdrop_layers(model)) == depth // 3
    assert model.state_dict().keys() == plain.state_dict().keys()
    x, y = batch()
    model.train()
    seen = {}
    for tm in maps:
        tm.register_forward_hook(lambda m, a, out: seen.__setitem__(m, (a[0].detach(), out.detach())))
    with ck.targets(model, y):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    for tm, (tokens, out) in seen.items():
        prefix = tm.prefix
        assert torch.equal(out[:, :prefix], tokens[:, :prefix])  # the prefix tokens pass untouched
    assert sum(float(layer.last_dropped.sum()) for layer in ck.camdrop_layers(model)) > 0
    assert all(s["ran"] for s in ck.dropped_stats(model).values())
    model.eval()
    plain.eval()
    with torch.no_grad():
        assert torch.equal(model(x), plain(x))


def test_vits_default_to_self_guidance_and_classifier_guidance_warns():
    """ViTs learn to read the label off a classifier-guided mask (examples/results/evidence.md):
    convert guides them by themselves unless asked, and warns when asked."""
    model = ck.convert(vit("timm_vit"), drop_prob=0.5)
    assert all(layer.guidance == "self" and layer.classifier is None for layer in ck.camdrop_layers(model))
    with pytest.warns(UserWarning, match="read the label off CamDrop's mask"):
        guided = ck.convert(vit("timm_vit"), drop_prob=0.5, guidance="classifier")
    assert all(layer.classifier is guided.head for layer in ck.camdrop_layers(guided))


def run_capturing(model, wrapper, x, y):
    """One training forward of ``model`` on (x, y): the input and output of ``wrapper`` (a TokenMap or
    GridMap) and the seed its layer drew (the next draw of torch's generator, seeded 7)."""
    captured = {}
    handle = wrapper.register_forward_hook(lambda m, a, out: captured.update(x=a[0].detach(), out=out.detach()))
    torch.manual_seed(7)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))  # the seed the layer will draw
    torch.manual_seed(7)
    with ck.targets(model, y):
        model(x)
    handle.remove()
    return captured["x"], captured["out"], seed


def test_the_patch_map_is_camdrop2d_of_the_channels_last_view_and_the_guidance_folds_the_norm():
    with pytest.warns(UserWarning, match="read the label"):
        model = ck.convert(vit("timm_vit"), drop_prob=0.5, where=1, guidance="classifier").train()
    tm = next(m for m in model.modules() if isinstance(m, TokenMap))
    layer = tm.camdrop
    x, y = batch()
    tokens, out, seed = run_capturing(model, tm, x, y)
    patch = tokens[:, 1:].unflatten(1, (GRID, GRID)).permute(0, 3, 1, 2)
    assert patch.stride(1) == 1  # channels innermost: a channels_last view, no copy
    alpha = (model.head.weight * model.norm.weight)[y]  # the final norm's gain folded into the head's rows
    cam = ck.class_activation_map(patch, alpha)
    want = reference.camdrop(patch, cam, alpha, 0.5, 3, seed=seed)
    got = out[:, 1:].unflatten(1, (GRID, GRID)).permute(0, 3, 1, 2)
    assert torch.equal(got, want)
    assert layer.classifier is model.head


def test_vit_compiles_checkpoints_and_follows_the_schedule():
    torch._dynamo.reset()
    model = ck.convert(vit("timm_vit"), drop_prob=0.3).train()
    model.set_grad_checkpointing(True)
    compiled = torch.compile(model, backend="aot_eager")
    x, y = batch()
    for step in range(3):
        ck.set_drop_prob(model, ck.linear_ramp(step + 1, 3, 0.3))
        with ck.targets(compiled, y):
            loss = F.cross_entropy(compiled(x), y)
        loss.backward()
    assert all(s["ran"] for s in ck.dropped_stats(model).values())
    assert sum(float(layer.last_dropped.sum()) for layer in ck.camdrop_layers(model)) > 0
    torch._dynamo.reset()


def test_token_layer_refuses_a_grid_it_cannot_tell():
    tm = TokenMap(ck.CamDrop2d(0.5, 3, guidance="self"), 1, (4, 4)).train()
    tm(torch.randn(2, 1 + 16, 8))  # the grid
    tm(torch.randn(2, 1 + 25, 8))  # a square one (dynamic image sizes)
    with pytest.raises(ValueError, match="do not fill the 4x4 grid"):
        tm(torch.randn(2, 1 + 15, 8))


def test_a_named_classifier_asks_for_classifier_guidance_on_a_vit():
    from timm.models.vision_transformer import VisionTransformer
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=4)
    with pytest.warns(UserWarning, match="classifier guidance on a vision transformer"):
        ck.convert(model, drop_prob=0.2, classifier=model.head)
    layers = ck.camdrop_layers(model)
    assert layers and all(layer.guidance == "classifier" and layer.classifier is model.head for layer in layers)


def tiny_swin():
    from timm.models.swin_transformer import SwinTransformer

    torch.manual_seed(0)
    return SwinTransformer(img_size=64, patch_size=4, window_size=2, embed_dim=16, depths=(1, 1, 2, 1),
                           num_heads=(1, 1, 2, 2), num_classes=4)


def test_grid_maps_compile_and_follow_the_schedule_as_eager():
    """(N, H, W, C) models (Swin: GridMap layers) under torch.compile: the same outputs as eager bit
    for bit, a drop-rate schedule without recompiling."""
    torch._dynamo.reset()
    eager = ck.convert(tiny_swin(), drop_prob=0.3, block_size=3).train()
    model = copy.deepcopy(eager)
    grids = [m for m in model.modules() if isinstance(m, ck.tokens.GridMap)]
    assert len(grids) == len(ck.camdrop_layers(model)) == 3  # (every block of the last two stages)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=False)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    counters = torch._dynamo.utils.counters
    for step in range(3):
        rate = ck.linear_ramp(step + 1, 3, 0.3)
        ck.set_drop_prob(model, rate)
        ck.set_drop_prob(eager, rate)
        torch.manual_seed(step)
        with ck.targets(compiled, y):
            got = compiled(x)
        torch.manual_seed(step)
        with ck.targets(eager, y):
            want = eager(x)
        assert torch.equal(got, want)
        got.sum().backward()
        if step == 0:
            frames = dict(counters["stats"])["unique_graphs"]
    assert dict(counters["stats"])["unique_graphs"] == frames  # (no recompile as the rate changes)
    assert all(s["ran"] for s in ck.dropped_stats(model).values())
    assert sum(float(layer.last_dropped.sum()) for layer in ck.camdrop_layers(model)) > 0
    torch._dynamo.reset()


def test_the_grid_map_is_camdrop2d_of_the_channels_last_view_and_the_guidance_folds_the_norm():
    """Swin's final LayerNorm runs on every position before the head pools: channel c's evidence is
    w[c] * g[c], as for a ViT's."""
    with pytest.warns(UserWarning, match="read the label"):
        model = ck.convert(tiny_swin(), drop_prob=0.5, where=1, block_size=3, guidance="classifier").train()
    with torch.no_grad():
        model.norm.weight.uniform_(0.5, 2.0)  # (a trained gain: 1 would hide a missing fold)
    grid = next(m for m in model.modules() if isinstance(m, ck.tokens.GridMap))
    assert grid.camdrop.guide.layout.norm == "norm"
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    maps, out, seed = run_capturing(model, grid, x, y)
    view = maps.permute(0, 3, 1, 2)  # (N, C, H, W), channels_last
    alpha = (model.head.fc.weight * model.norm.weight)[y]
    cam = ck.class_activation_map(view, alpha)
    want = reference.camdrop(view, cam, alpha, 0.5, 3, seed=seed)
    assert torch.equal(out.permute(0, 3, 1, 2), want)
    assert float((want == 0).float().mean()) > 0
