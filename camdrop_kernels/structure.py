"""A model's structure as ``convert`` reads it: convs and their ranks, stages, blocks.

Stages (for ``where=k`` and the per-stage defaults) are the model's resolution levels: timm's
``feature_info`` where the model has one, else torchvision's layouts (``layer1``..``layer4``;
``features`` split at each downsampling child; ``trunk_output``). A stage's *blocks* are its
repeated units (a ResNet's residual blocks, a ConvNeXt stage's ``blocks``, an EfficientNet
stage's MBConvs).
"""
from __future__ import annotations

import sys
from typing import List, NamedTuple, Optional, Tuple

from torch import nn

CONVS = ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3))
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def conv_rank(module: nn.Module) -> Optional[int]:
    for cls, rank in CONVS:
        if isinstance(module, cls):
            return rank
    return None


def is_spatial_conv(module: nn.Module) -> bool:
    """A conv with a kernel wider than 1 along some axis (1x1 convs mix channels only)."""
    return conv_rank(module) is not None and any(k > 1 for k in module.kernel_size)


def has_spatial_conv(module: nn.Module) -> bool:
    return any(is_spatial_conv(m) for m in module.modules())


def is_container(module: nn.Module) -> bool:
    return type(module) in CONTAINERS  # exactly: subclasses (Conv2dNormActivation, ...) are units


def repeated(units: List[nn.Module]) -> bool:
    """Two or more modules of one composite, non-container class, each more than one conv with its
    norm (two convs, or a conv beside linear layers: a ConvNeXt or TinyViT block): a run of blocks.
    (Conv-norm units of one class side by side are an Inception module's parallel branches.)"""
    cls = type(units[0])
    return (len(units) >= 2 and all(type(u) is cls for u in units) and not issubclass(cls, CONTAINERS)
            and any(True for _ in units[0].children())
            and all(sum(conv_rank(m) is not None for m in u.modules()) >= 2
                    or any(isinstance(m, nn.Linear) for m in u.modules()) for u in units))


def blocks(member: nn.Module) -> List[nn.Module]:
    """The blocks of one stage member (see conversion_places)."""
    return [unit for block in _blocks(member) for unit in _hookable(block)]


def _blocks(member: nn.Module) -> List[nn.Module]:
    kids = [c for c in member.children() if has_spatial_conv(c)]
    if is_container(member):  # a stage of blocks, or itself one block (conv-bn-act)
        return [c for c in kids if any(True for _ in c.children())] or [member]
    if kids and repeated(kids):  # timm RegStage (b1, b2, ...), torchvision AnyStage
        return kids
    found = []
    for child in kids:  # a container of repeated blocks (timm ConvNeXtStage.blocks)
        if is_container(child):
            inner = [c for c in child.children() if has_spatial_conv(c)]
            if inner and repeated(inner):
                found += inner
    return found or [member]


def _hookable(block: nn.Module) -> List[nn.Module]:
    """A container subclass with its own forward (timm RDNet's DenseStage iterates itself) cannot
    take a ``camdrop`` child, which would join its iteration: its blocks are its children."""
    if isinstance(block, CONTAINERS) and not is_container(block) and type(block).forward is not nn.Sequential.forward:
        inner = [c for c in block.children() if has_spatial_conv(c)]
        if inner:
            return inner
    return [block]


def timm_levels(model: nn.Module) -> Optional[List[List[str]]]:
    """Each feature level's member modules, from timm's feature_info: the modules after the
    previous level's module up to this level's, among the children of their common parent."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return None
    try:
        # ('' is the model itself: a stem computed in the model's own forward, e.g. TResNet's
        # space-to-depth; it holds no block)
        points = [entry["module"] for entry in info if entry["module"]]
    except (TypeError, KeyError):
        return None
    points = list(dict.fromkeys(points))  # (CoaT names one module for several levels)
    modules = dict(model.named_modules())
    if not points or any(p not in modules for p in points):
        return None
    levels, previous = [], None
    for point in points:
        parent_name, _, _ = point.rpartition(".")
        siblings = [f"{parent_name}.{n}" if parent_name else n for n, _ in modules[parent_name].named_children()]
        end = siblings.index(point)
        if previous is not None and previous.rpartition(".")[0] == parent_name:
            start = siblings.index(previous) + 1
        elif previous is None:
            start = 0
        else:
            start = end
        if end >= start:
            levels.append(siblings[start:end + 1])
        previous = point
    return levels or None


def downsamples(module: nn.Module) -> bool:
    for m in module.modules():
        stride = getattr(m, "stride", None)
        if isinstance(m, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
            strides = stride if isinstance(stride, (tuple, list)) else (stride,)
            if any(s is not None and s > 1 for s in strides):
                return True
    return False


def torchvision_levels(model: nn.Module) -> Optional[List[List[str]]]:
    """Levels of torchvision's layouts: ResNet/VideoResNet layer1..layer4; a ``features`` (or
    ``trunk_output``) Sequential split at each child that downsamples (the stem is level 0): a
    strided conv block, or a child without a spatial conv that pools (VGG's and AlexNet's max
    pooling, SqueezeNet's, DenseNet's transitions). Such a pooling child belongs to the level it
    starts (its output is at that level's resolution) but holds no block; a level without a
    spatial conv (VGG's final pooling) is no stage."""
    if all(isinstance(getattr(model, f"layer{i}", None), nn.Module) for i in range(1, 5)):
        return [[f"layer{i}"] for i in range(1, 5)]
    # A ResNet inside a wrapper: a detection backbone's body (torchvision's BackboneWithFPN:
    # ``body`` holds layer1..layer4), a model's ``backbone``.
    bodies = [name for name, m in model.named_modules() if name and
              all(isinstance(getattr(m, f"layer{i}", None), nn.Module) for i in range(1, 5))]
    if len(bodies) == 1:
        return [[f"{bodies[0]}.layer{i}"] for i in range(1, 5)]
    for attr in ("features", "trunk_output"):
        trunk = getattr(model, attr, None)
        if isinstance(trunk, nn.Sequential):
            return _split(trunk.named_children(), f"{attr}.")
    # torchvision models whose trunk is their own children, in forward order (the aux heads and
    # the classifier, which hold a Linear, left out), or a `layers` Sequential (MNASNet).
    kind = next((kind for (module, name), kind in _TORCHVISION_TRUNKS.items()
                 if isinstance(model, getattr(sys.modules.get(module), name, ()))), None)  # (subclasses too)
    if kind == "children":
        return _split(((n, c) for n, c in model.named_children()
                       if not any(isinstance(m, nn.Linear) for m in c.modules())), "")
    if kind == "layers" and isinstance(getattr(model, "layers", None), nn.Sequential):
        return _split(model.layers.named_children(), "layers.")
    if kind == "backbone" and isinstance(getattr(model, "backbone", None), nn.Module):
        return _split(model.backbone.named_children(), "backbone.")
    return None


_TORCHVISION_TRUNKS = {("torchvision.models.googlenet", "GoogLeNet"): "children",
                       ("torchvision.models.inception", "Inception3"): "children",
                       ("torchvision.models.shufflenetv2", "ShuffleNetV2"): "children",
                       ("torchvision.models.mnasnet", "MNASNet"): "layers",
                       # segmentation models: a MobileNetV3's features as their backbone (an
                       # IntermediateLayerGetter; ResNet backbones are found by their layer1..layer4)
                       ("torchvision.models.segmentation.lraspp", "LRASPP"): "backbone",
                       ("torchvision.models.segmentation._utils", "_SimpleSegmentationModel"): "backbone"}


_TORCHVISION_DENSE = {("torchvision.models.segmentation._utils", "_SimpleSegmentationModel"): "segmentation",
                      ("torchvision.models.segmentation.lraspp", "LRASPP"): "segmentation",  # (FCN, DeepLabV3 above)
                      ("torchvision.models.detection.generalized_rcnn", "GeneralizedRCNN"): "detection",
                      ("torchvision.models.detection.retinanet", "RetinaNet"): "detection",
                      ("torchvision.models.detection.fcos", "FCOS"): "detection",
                      ("torchvision.models.detection.ssd", "SSD"): "detection"}


def dense_predictor(model: nn.Module) -> Optional[str]:
    """The kind of model when its heads predict per pixel or per box (torchvision's segmentation and
    detection models), so that no image-level label can guide it; None otherwise."""
    for (module, name), kind in _TORCHVISION_DENSE.items():
        if isinstance(model, getattr(sys.modules.get(module), name, ())):  # (subclasses too)
            return f"{type(model).__name__} (a {kind} model)"
    return None


def _split(children, prefix: str) -> Optional[List[List[str]]]:
    """A trunk's children split into levels at each child that downsamples (torchvision_levels)."""
    levels: List[List[str]] = []
    current: List[str] = []
    has_conv = False  # does the current level hold a spatial conv yet?
    for name, child in children:
        spatial, down = has_spatial_conv(child), downsamples(child)
        if down and has_conv:  # a strided conv block, or a pooling / transition child (VGG, DenseNet)
            levels.append(current)
            current, has_conv = [], False
        if spatial or down:  # (1x1 head convs, activations and norms between stages are left out)
            current.append(f"{prefix}{name}")
            has_conv = has_conv or spatial
    if has_conv:
        levels.append(current)
    return levels or None


def levels(model: nn.Module) -> Optional[List[List[str]]]:
    return timm_levels(model) or torchvision_levels(model)


def first_rank(module: nn.Module) -> Optional[int]:
    for m in module.modules():
        rank = conv_rank(m)
        if rank is not None:
            return rank
    return None


def place_rank(model: nn.Module, name: str) -> Optional[int]:
    """The rank of the map at ``name``'s output: its first conv's, else the last conv before it."""
    module = model.get_submodule(name)
    rank = first_rank(module)
    if rank is not None:
        return rank
    last = None
    for other_name, other in model.named_modules():
        if other_name == name:
            return last
        rank = conv_rank(other)
        if rank is not None:
            last = rank
    return last


def stage_of(name: str, levels: Optional[List[List[str]]]) -> Optional[int]:
    if not levels:
        return None
    for index, level in enumerate(levels):
        if any(name == m or name.startswith(m + ".") for m in level):
            return len(levels) - 1 - index
    return None


def dropblock_types() -> Tuple[type, ...]:
    """The DropBlock layers a library may keep in a block (timm's DropBlock2d, from
    ``drop_block_rate``; torchvision.ops' DropBlock2d/3d), among the modules already imported (a
    model cannot hold a class whose module was never imported)."""
    found = []
    for module_name, names in (("timm.layers.drop", ("DropBlock2d",)),
                               ("torchvision.ops.drop_block", ("DropBlock2d", "DropBlock3d"))):
        module = sys.modules.get(module_name)
        found += [getattr(module, n) for n in names if isinstance(getattr(module, n, None), type)]
    return tuple(found)


def is_pointwise_conv(module: nn.Module) -> bool:
    return conv_rank(module) is not None and all(k == 1 for k in module.kernel_size)


# -- vision transformers ------------------------------------------------------------------------
class VitPlan(NamedTuple):
    """What ``convert`` needs to know about a vision transformer."""

    blocks: List[str]  # the blocks' module names, in order
    prefix: int  # class / distillation / register tokens before the patches
    grid: Tuple[int, int]  # patch rows and columns at the model's image size
    classifier: Optional[str]  # the head's module name; None when no linear head reads one feature per channel
    norm: Optional[str]  # the LayerNorm between the last block and the head (folded into the guidance)
    pool: str  # how the head reads the tokens (or why there is no classifier), for messages
    local: int = 0  # the first blocks that carry no prefix tokens (ConViT adds its class token later)

    def prefix_at(self, name: str) -> int:
        """The prefix tokens in the output of ``name`` (a block, or a module inside one)."""
        for index, block in enumerate(self.blocks):
            if name == block or name.startswith(block + "."):
                return 0 if index < self.local else self.prefix
        return self.prefix


def vit_plan(model: nn.Module) -> Optional[VitPlan]:
    """The plan for a timm or torchvision vision transformer; None for other models."""
    names = {m: n for n, m in model.named_modules()}
    blocks = getattr(model, "blocks", None)
    embed = getattr(model, "patch_embed", None)
    if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and embed is not None and hasattr(model, "num_prefix_tokens"):
        # CaiT's class token joins only in its class-attention blocks after ``blocks``: the
        # blocks CamDrop follows carry the patch tokens alone.
        prefix = 0 if isinstance(getattr(model, "blocks_token_only", None), nn.Module) else int(model.num_prefix_tokens)
        # ConViT adds its class token after its first local_up_to_layer blocks
        local = int(getattr(model, "local_up_to_layer", 0) or 0) if prefix else 0
        grid = tuple(getattr(embed, "grid_size", ()) or ())
        if len(grid) != 2:
            return None
        head = getattr(model, "head", None)
        fc_norm, norm = getattr(model, "fc_norm", None), getattr(model, "norm", None)
        pool = getattr(model, "global_pool", "token")
        # The norm that reaches the head: fc_norm after average pooling, else the final norm.
        reaching = fc_norm if pool != "token" and _is_norm(fc_norm) else norm
        how = "the class token" if pool == "token" else f"the patch tokens pooled ({pool!r})"
        classifier = names[head] if isinstance(head, nn.Linear) else None
        if classifier is None:
            how = "no linear head (created with num_classes=0?)"
        elif pool not in ("token", "avg", "avgmax", "max"):
            classifier = None  # ('map': an attention-pooling head mixes the channels; '': no pooling)
            how = f"global_pool={pool!r}, a head that does not read one feature per channel"
        return VitPlan([names[b] for b in blocks], prefix, (int(grid[0]), int(grid[1])), classifier,
                       names[reaching] if _is_norm(reaching) else None, how, local)
    encoder = getattr(model, "encoder", None)
    layers = getattr(encoder, "layers", None)
    if isinstance(layers, nn.Sequential) and hasattr(model, "image_size") and hasattr(model, "patch_size") \
            and hasattr(model, "class_token"):
        heads = getattr(model, "heads", None)
        head = getattr(heads, "head", None) if isinstance(heads, nn.Module) else None
        side = int(model.image_size) // int(model.patch_size)
        ln = getattr(encoder, "ln", None)
        if not isinstance(head, nn.Linear) or len(heads) != 1:  # (a hidden pre-logits layer: no channel weights)
            return VitPlan([names[b] for b in layers], 1, (side, side), None, None,
                           "a hidden pre-logits layer before the head")
        return VitPlan([names[b] for b in layers], 1, (side, side), names[head], names[ln] if _is_norm(ln) else None,
                       "the class token")
    return None


def _is_norm(module) -> bool:
    return isinstance(module, nn.LayerNorm) and module.elementwise_affine and module.weight is not None


# -- (N, H, W, C) maps ---------------------------------------------------------------------------
class GridPlan(NamedTuple):
    """A model whose blocks output (N, H, W, C) maps (see :func:`nhwc_plan`)."""

    stages: List[List[str]]  # each stage's block names, in order
    containers: List[str]  # other modules whose outputs are (N, H, W, C) maps: the blocks' Sequential, the stage
    norm: Optional[str]  # the LayerNorm over the channels before the head (its gain is folded into the guidance)


def nhwc_plan(model: nn.Module) -> Optional[GridPlan]:
    """The stages of models whose blocks output (N, H, W, C) maps: timm models with ``output_fmt ==
    "NHWC"`` and stages of ``blocks`` (Swin, SwinV2, MambaOut, Sequencer), timm TinyViT's attention
    stages, torchvision's Swin Transformers (V1, V2); None for other models."""
    norm = getattr(model, "norm", None)
    norm_name = "norm" if _is_norm(norm) and len(norm.normalized_shape) == 1 else None  # (over the channels)
    if getattr(model, "output_fmt", None) == "NHWC":
        for attr in ("layers", "stages"):
            stages = getattr(model, attr, None)
            if isinstance(stages, nn.Sequential) and len(stages) and \
                    all(isinstance(getattr(stage, "blocks", None), (nn.Sequential, nn.ModuleList)) for stage in stages):
                return GridPlan([[f"{attr}.{i}.blocks.{j}" for j in range(len(stage.blocks))]
                                 for i, stage in enumerate(stages)],
                                [f"{attr}.{i}{tail}" for i in range(len(stages)) for tail in ("", ".blocks")], norm_name)
        return None
    tiny_vit = sys.modules.get("timm.models.tiny_vit")
    if tiny_vit is not None and isinstance(model, tiny_vit.TinyVit):
        # its attention stages run their blocks on (N, H, W, C) and permute back (the stage's own
        # output is (N, C, H, W)); the first stage (MBConvs) is an ordinary conv stage, not listed
        kept = [i for i, stage in enumerate(model.stages) if isinstance(stage, tiny_vit.TinyVitStage)]
        if not kept:
            return None
        return GridPlan([[f"stages.{i}.blocks.{j}" for j in range(len(model.stages[i].blocks))] for i in kept],
                        [f"stages.{i}.blocks" for i in kept], None)
    swin = sys.modules.get("torchvision.models.swin_transformer")
    if swin is not None and isinstance(model, swin.SwinTransformer):
        kinds = (swin.SwinTransformerBlock, swin.SwinTransformerBlockV2)
        kept = [i for i, child in enumerate(model.features)
                if isinstance(child, nn.Sequential) and len(child) and all(isinstance(b, kinds) for b in child)]
        if not kept:
            return None
        return GridPlan([[f"features.{i}.{j}" for j in range(len(model.features[i]))] for i in kept],
                        [f"features.{i}" for i in kept], norm_name)
    return None

