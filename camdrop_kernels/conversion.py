"""``convert``: put bound CamDrop layers into any CNN; ``convert_resnet``: its ResNet preset.

A *place* is a module whose output is a conv feature map (N, C, *S). ``convert`` gives each
place a CamDrop layer of the map's rank (Conv1d/2d/3d -> CamDrop1d/2d/3d), bound to the
model's classifier. An ``nn.Identity`` place (timm's ``drop_block`` slot) is replaced by the
layer; any other place keeps its module and gets a forward hook that applies the layer, which is
registered as the module's ``camdrop`` child. CamDrop layers hold only a non-persistent buffer,
so ``state_dict`` keys and pretrained weights are untouched, and in eval mode every layer is the
identity, so evaluation is bit-identical to the unconverted model.

Stages (for ``where=k`` and for the per-stage defaults) are the model's resolution levels:
timm's ``feature_info`` where the model has one, else torchvision's layouts (``layer1``..
``layer4``; ``features`` split at each downsampling child; ``trunk_output``). A stage's
*blocks* are its repeated units (a ResNet's residual blocks, a ConvNeXt stage's ``blocks``, an
EfficientNet stage's MBConvs), found as described in :func:`conversion_places`.
"""
from __future__ import annotations

import re
import sys
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

from torch import nn

from . import placement, validation
from .nn import CamDrop1d, CamDrop2d, CamDrop3d, CamDropNd
from .placement import unwrap as _unwrap

# timm's drop_block_rate uses 5 in stage 3 and 3 in stage 4; DropBlock's default 7 before that.
DEFAULT_BLOCK_SIZE = {1: 7, 2: 7, 3: 5, 4: 3}
# The same, counted from the last stage (0 = last): what convert uses for any model.
_BLOCK_SIZE_FROM_LAST = {0: 3, 1: 5}
_UNSTAGED_BLOCK_SIZE = 7
DEFAULT_STAGES = 2
SUPPORTED = ("timm ResNet-family models (timm.models.resnet.ResNet: resnet*, resnext*, seresnet*, wide_resnet*, "
             "...) and torchvision ResNets (torchvision.models.ResNet: resnet18-152, resnext*, wide_resnet*)")
_LAYERS = {1: CamDrop1d, 2: CamDrop2d, 3: CamDrop3d}
_CONVS = ((nn.Conv1d, 1), (nn.Conv2d, 2), (nn.Conv3d, 3))
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)

Where = Union[None, int, str, nn.Module, Sequence[Union[str, nn.Module]]]


class Place(NamedTuple):
    """Where ``convert`` puts one CamDrop layer (see :func:`conversion_places`)."""

    name: str  # the module whose output is dropped (the layer replaces it when ``replace``)
    rank: int  # 1, 2 or 3: the map's spatial axes
    stage: Optional[int]  # counted from the last stage (0 = last); None when outside the known stages
    replace: bool  # an nn.Identity slot (e.g. timm's drop_block), or a DropBlock layer, that the layer replaces


# ---------------------------------------------------------------------------------------------
# The model's structure: convs, stages, blocks
# ---------------------------------------------------------------------------------------------
def _conv_rank(module: nn.Module) -> Optional[int]:
    for cls, rank in _CONVS:
        if isinstance(module, cls):
            return rank
    return None


def _is_spatial_conv(module: nn.Module) -> bool:
    """A conv with a kernel wider than 1 along some axis (1x1 convs mix channels only)."""
    return _conv_rank(module) is not None and any(k > 1 for k in module.kernel_size)


def _has_spatial_conv(module: nn.Module) -> bool:
    return any(_is_spatial_conv(m) for m in module.modules())


def _is_container(module: nn.Module) -> bool:
    return type(module) in _CONTAINERS  # exactly: subclasses (Conv2dNormActivation, ...) are units


def _repeated(units: List[nn.Module]) -> bool:
    """Two or more modules of one composite, non-container class: a run of blocks."""
    cls = type(units[0])
    return (len(units) >= 2 and all(type(u) is cls for u in units) and not issubclass(cls, _CONTAINERS)
            and any(True for _ in units[0].children()))


def _blocks(member: nn.Module) -> List[nn.Module]:
    """The blocks of one stage member (see conversion_places)."""
    kids = [c for c in member.children() if _has_spatial_conv(c)]
    if _is_container(member):  # a stage of blocks, or itself one block (conv-bn-act)
        return [c for c in kids if any(True for _ in c.children())] or [member]
    if kids and _repeated(kids):  # timm RegStage (b1, b2, ...), torchvision AnyStage
        return kids
    found = []
    for child in kids:  # a container of repeated blocks (timm ConvNeXtStage.blocks)
        if _is_container(child):
            inner = [c for c in child.children() if _has_spatial_conv(c)]
            if inner and _repeated(inner):
                found += inner
    return found or [member]


def _timm_levels(model: nn.Module) -> Optional[List[List[str]]]:
    """Each feature level's member modules, from timm's feature_info: the modules after the
    previous level's module up to this level's, among the children of their common parent."""
    info = getattr(model, "feature_info", None)
    if info is None:
        return None
    try:
        points = [entry["module"] for entry in info]
    except (TypeError, KeyError):
        return None
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
        levels.append(siblings[start:end + 1])
        previous = point
    return levels


def _downsamples(module: nn.Module) -> bool:
    for m in module.modules():
        stride = getattr(m, "stride", None)
        if isinstance(m, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
            strides = stride if isinstance(stride, (tuple, list)) else (stride,)
            if any(s is not None and s > 1 for s in strides):
                return True
    return False


def _torchvision_levels(model: nn.Module) -> Optional[List[List[str]]]:
    """Levels of torchvision's layouts: ResNet/VideoResNet layer1..layer4; a ``features`` (or
    ``trunk_output``) Sequential split at each child that downsamples (the stem is level 0): a
    strided conv block, or a child without a spatial conv that pools (VGG's and AlexNet's max
    pooling, SqueezeNet's, DenseNet's transitions). Such a pooling child belongs to the level it
    starts (its output is at that level's resolution) but holds no block; a level without a
    spatial conv (VGG's final pooling) is no stage."""
    if all(isinstance(getattr(model, f"layer{i}", None), nn.Module) for i in range(1, 5)):
        return [[f"layer{i}"] for i in range(1, 5)]
    for attr in ("features", "trunk_output"):
        trunk = getattr(model, attr, None)
        if isinstance(trunk, nn.Sequential):
            levels: List[List[str]] = []
            current: List[str] = []
            has_conv = False  # does the current level hold a spatial conv yet?
            for name, child in trunk.named_children():
                spatial, down = _has_spatial_conv(child), _downsamples(child)
                if down and has_conv:  # a strided conv block, or a pooling / transition child (VGG, DenseNet)
                    levels.append(current)
                    current, has_conv = [], False
                if spatial or down:  # (1x1 head convs, activations and norms between stages are left out)
                    current.append(f"{attr}.{name}")
                    has_conv = has_conv or spatial
            if has_conv:
                levels.append(current)
            return levels or None
    return None


def _levels(model: nn.Module) -> Optional[List[List[str]]]:
    return _timm_levels(model) or _torchvision_levels(model)


def _first_rank(module: nn.Module) -> Optional[int]:
    for m in module.modules():
        rank = _conv_rank(m)
        if rank is not None:
            return rank
    return None


def _place_rank(model: nn.Module, name: str) -> Optional[int]:
    """The rank of the map at ``name``'s output: its first conv's, else the last conv before it."""
    module = model.get_submodule(name)
    rank = _first_rank(module)
    if rank is not None:
        return rank
    last = None
    for other_name, other in model.named_modules():
        if other_name == name:
            return last
        rank = _conv_rank(other)
        if rank is not None:
            last = rank
    return last


# ---------------------------------------------------------------------------------------------
# where -> places
# ---------------------------------------------------------------------------------------------
def _glob_class(body: str) -> str:
    """The regex of a glob character class's body (between ``[`` and ``]``), as fnmatch reads it:
    a leading ``!`` negates, ``a-z`` is a range (a reversed range matches nothing), every other
    character is itself (``]`` first, ``-`` first or last, ``^``, ``\\``). A negated class does not
    match ``.``: like ``?``, it stays within one name segment."""
    negate = body.startswith("!")
    if negate:
        body = body[1:]
    items, k = [], 0
    while k < len(body):
        if k + 2 < len(body) and body[k + 1] == "-":
            lo, hi = body[k], body[k + 2]
            if lo <= hi:
                items.append(f"{re.escape(lo)}-{re.escape(hi)}")
            k += 3
        else:
            items.append(re.escape(body[k]))
            k += 1
    if negate:
        return "[^" + "".join(items) + r"\.]"
    return "[" + "".join(items) + "]" if items else "(?!)"


def _pattern(text: str) -> "re.Pattern[str]":
    """A module-name pattern: ``re:<regex>`` (full match), else a glob over dotted names in which
    ``*`` and ``?`` stay within one name segment, ``**`` spans any number of them, and ``[...]``
    is a character class as in fnmatch (``[2-4]`` a range, ``[!1-3]`` its negation, ``[]]`` a
    ``]``); a ``[`` without a closing ``]`` is itself. A name without these characters matches
    itself only."""
    if text.startswith("re:"):
        return re.compile(text[3:])
    out, i, n = [], 0, len(text)
    while i < n:
        ch = text[i]
        if text.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if ch == "*":
            out.append("[^.]*")
        elif ch == "?":
            out.append("[^.]")
        elif ch == "[":
            j = i + 1
            if j < n and text[j] == "!":
                j += 1
            if j < n and text[j] == "]":  # a ']' first in the class is itself
                j += 1
            end = text.find("]", j)
            if end < 0:
                out.append(re.escape(ch))
            else:
                out.append(_glob_class(text[i + 1:end]))
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return re.compile("".join(out))


def _candidates(model: nn.Module, limit: int = 12) -> str:
    names = [n for n, m in model.named_modules() if n and not _is_container(m) and _has_spatial_conv(m)
             and n.count(".") <= 2]
    shown = ", ".join(repr(n) for n in names[-limit:])
    return f" (modules with convs, last {limit}: {shown})" if names else ""


def _named_places(model: nn.Module, where) -> List[str]:
    items = [where] if isinstance(where, (str, nn.Module)) else list(where)
    if not items:
        raise ValueError("where is empty: name at least one module or pattern")
    names = {m: n for n, m in model.named_modules()}
    all_names = [n for n in names.values() if n]
    chosen: List[str] = []
    for item in items:
        if isinstance(item, nn.Module):
            if item not in names or not names[item]:
                raise ValueError(f"where names a {type(item).__name__} that is not a submodule of the model")
            hits = [names[item]]
        elif isinstance(item, str):
            try:
                pattern = _pattern(item)
            except re.error as e:
                raise ValueError(f"where pattern {item!r} is not a valid regex: {e}") from None
            hits = [n for n in all_names if pattern.fullmatch(n)]
            if not hits:
                raise ValueError(f"where pattern {item!r} matches no module of {type(model).__name__}"
                                 f"{_candidates(model)}")
        else:
            raise TypeError(f"where items must be module names, patterns or modules; got {type(item).__name__}")
        chosen += [h for h in hits if h not in chosen]
    order = {n: i for i, n in enumerate(all_names)}
    return sorted(chosen, key=order.__getitem__)


def _stage_places(model: nn.Module, levels: List[List[str]], k: int) -> List[str]:
    if not 1 <= k <= len(levels):
        raise ValueError(f"where={k} asks for the last {k} stages, but {type(model).__name__} has {len(levels)}: "
                         f"{[lv[-1] for lv in levels]}")
    names = {m: n for n, m in model.named_modules()}
    places = []
    for level in levels[-k:]:
        for member in level:
            module = model.get_submodule(member)
            if not _has_spatial_conv(module):
                continue  # a pooling or transition child that starts the level, a stem's norm: no block
            for block in _blocks(module):
                places.append(_slot(block, names[block]))
    return places


def _dropblock_types() -> Tuple[type, ...]:
    """The DropBlock layers a library may keep in a block (timm's DropBlock2d, from
    ``drop_block_rate``; torchvision.ops' DropBlock2d/3d), among the modules already imported (a
    model cannot hold a class whose module was never imported)."""
    found = []
    for module_name, names in (("timm.layers.drop", ("DropBlock2d",)),
                               ("torchvision.ops.drop_block", ("DropBlock2d", "DropBlock3d"))):
        module = sys.modules.get(module_name)
        found += [getattr(module, n) for n in names if isinstance(getattr(module, n, None), type)]
    return tuple(found)


def _slot(block: nn.Module, name: str) -> str:
    """Where in a block the layer goes: the library's own slot where it has one (timm's
    ``drop_block``, empty or holding timm's DropBlock2d, which the layer replaces; a DropBlock
    elsewhere in the block, e.g. in the norm-act of timm ByobNet's 3x3 conv; torchvision ResNet
    blocks: the BN after the 3x3 conv, as convert_resnet), else the block's output."""
    dropblocks = _dropblock_types()
    if isinstance(getattr(block, "drop_block", None), (nn.Identity, CamDropNd) + dropblocks):
        return f"{name}.drop_block"
    if dropblocks:
        inner = [n for n, m in block.named_modules() if n and isinstance(m, dropblocks)]
        if inner:
            return f"{name}.{inner[0]}"
    try:
        from torchvision.models.resnet import BasicBlock, Bottleneck
    except ImportError:  # pragma: no cover
        return name
    if isinstance(block, Bottleneck):
        return f"{name}.bn2"
    if isinstance(block, BasicBlock):
        return f"{name}.bn1"
    return name


def _stage_of(name: str, levels: Optional[List[List[str]]]) -> Optional[int]:
    if not levels:
        return None
    for index, level in enumerate(levels):
        if any(name == m or name.startswith(m + ".") for m in level):
            return len(levels) - 1 - index
    return None


def conversion_places(model: nn.Module, where: Where = None, *, rank: Optional[int] = None) -> List[Place]:
    """Where :func:`convert` would put CamDrop layers, without changing the model.

    ``where`` accepts:

    - ``None``: the default, ``2``;
    - an int ``k``: every block of the last ``k`` stages. Stages are timm's ``feature_info``
      levels where the model has them (a level spans the modules after the previous level's
      module up to its own, e.g. EfficientNet's ``blocks.3`` and ``blocks.4``), else
      torchvision's ``layer1``..``layer4``, or its ``features``/``trunk_output`` Sequential split
      at each downsampling child: a strided conv block, or a pooling child (VGG, AlexNet,
      SqueezeNet) or DenseNet transition, which starts the level but holds no block (1x1 head
      convs left out). A stage's blocks are the composite
      children of a plain Sequential stage (or the stage itself if it has none), else a run of
      two or more same-class children (timm RegNet), else the same inside a ``blocks``-like
      Sequential child (timm ConvNeXt), else the stage itself. In each block the layer goes
      in the library's own slot where it has one (timm's ``drop_block``, replacing the
      DropBlock2d a ``drop_block_rate`` model keeps there; the BN after a torchvision ResNet
      block's 3x3 conv), else on the block's output;
    - a module name (``"layer4.1.bn1"``), a glob (``"stages.3.blocks.*"``: ``*`` and ``?``
      within one dotted segment, ``**`` across segments, ``[...]`` a class as in fnmatch:
      ``[2-4]``, ``[!1-3]``), a regex
      (``"re:blocks\\.[56]\\.\\d+"``, full match), a submodule object, or a list of these: the
      output of every module matched (each item must match one at least).

    ``rank`` overrides the map's rank, which is read from the place's first conv (else the last
    conv before it).
    """
    if rank is not None and (isinstance(rank, bool) or rank not in _LAYERS):
        raise ValueError(f"rank must be 1, 2 or 3; got {rank!r}")
    model = _unwrap(model)
    levels = _levels(model)
    if where is None:
        where = DEFAULT_STAGES
    if validation.is_int(where):
        if levels is None:
            raise ValueError(
                f"convert cannot find the stages of {type(model).__name__} (no timm feature_info, no torchvision "
                f"layer1..layer4 / features / trunk_output): pass where= the modules to drop after, as names, "
                f"glob or 're:' patterns{_candidates(model)}")
        names = _stage_places(model, levels, where)
    elif isinstance(where, bool) or not isinstance(where, (str, nn.Module, list, tuple)):
        raise TypeError(f"where must be None, an int (the last k stages), a module name or pattern, a module, or a "
                        f"list of these; got {type(where).__name__}")
    else:
        names = _named_places(model, where)
    places = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear):
            raise ValueError(f"{name!r} is an nn.Linear: CamDrop drops blocks of conv feature maps (N, C, *S); name "
                             "a conv block or stage instead")
        place_rank = rank if rank is not None else _place_rank(model, name)
        if place_rank is None:
            raise ValueError(f"cannot tell the rank of the map at {name!r} (no Conv1d/2d/3d in or before it): pass "
                             "rank=1, 2 or 3")
        places.append(Place(name, place_rank, _stage_of(name, levels),
                            isinstance(module, (nn.Identity,) + _dropblock_types())))
    return places


# ---------------------------------------------------------------------------------------------
# The classifier
# ---------------------------------------------------------------------------------------------
def _last_linear(module: nn.Module) -> Optional[nn.Module]:
    found = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            found = m
    return found


def _is_pointwise_conv(module: nn.Module) -> bool:
    return _conv_rank(module) is not None and all(k == 1 for k in module.kernel_size)


def _last_pointwise_conv(module: nn.Module) -> Optional[nn.Module]:
    found = None
    for m in module.modules():
        if _is_pointwise_conv(m):
            found = m
    return found


def find_classifier(model: nn.Module) -> nn.Module:
    """The final layer that guides CamDrop: timm's ``get_classifier()``, else torchvision's
    ``fc`` / ``classifier`` / ``head`` / ``heads`` (the last Linear inside a Sequential, else its
    last 1x1 conv: a conv classifier such as SqueezeNet's), else the model's last nn.Linear.
    Whether its layout can guide CamDrop is :func:`head_layout`'s question."""
    model = _unwrap(model)
    name = type(model).__name__
    head, where_from = None, None
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            head, where_from = get(), "get_classifier()"
        except Exception:  # noqa: BLE001  (a model's own get_classifier may not apply)
            head = None
    if not isinstance(head, nn.Module):
        head = None
        for attr in ("fc", "classifier", "head", "heads"):
            candidate = getattr(model, attr, None)
            if isinstance(candidate, nn.Module):
                head, where_from = candidate, f".{attr}"
                break
    if head is None:
        linear = _last_linear(model)
        if linear is None:
            raise ValueError(f"cannot find the classifier of {name} (no nn.Linear): pass classifier= the final linear "
                             "layer (a module with a 2-D (num_classes, features) weight)")
        return linear
    linear = head if isinstance(head, nn.Linear) else (_last_linear(head) or _last_pointwise_conv(head))
    if linear is None:
        raise ValueError(f"the model's classifier ({name}{where_from}) is a {type(head).__name__}, not an nn.Linear "
                         "(was the model created with num_classes=0?): pass classifier= the final linear layer")
    return linear


# -- the head's layout: how the classifier's features come from the pooled map's channels ---------
class HeadLayout(NamedTuple):
    """How the classifier's input features come from the channels of the map its head pools.

    The classifier (``name``, a (K, ``features``) weight) reads ``features = copies * channels *
    cells`` values: the pooled map's ``channels``, each pooled to ``cells`` values (an adaptive
    pool to a grid, flattened channel-major: VGG's 7x7 gives 49), the whole repeated ``copies``
    times (pooled copies concatenated along the features: timm's ``catavgmax`` gives [avg(C),
    max(C)], 2). Feature ``f`` belongs to channel ``(f // cells) % channels``.

    A channel's evidence for class k is the sum of its own weights, :meth:`fold`: for every pooling
    timm and torchvision offer that is the class score's gradient with respect to the channel's
    map, summed over the map (avg: w / P at each of P pixels; max: w at the arg max; avgmax:
    w/2 + w/2), i.e. Grad-CAM's channel weight, which for plain average pooling is the CAM's own
    weight. Only the ranking of channels and pixels uses it, so a constant factor (the mean
    instead of the sum) changes nothing.
    """

    name: str  # the classifier's name in the model
    channels: int  # C: channels of the map the head pools
    features: int  # C': the classifier's input features
    copies: int = 1  # pooled copies concatenated along the features (catavgmax: 2)
    cells: int = 1  # values per channel and copy (an adaptive pool to a grid: its cells)
    pool: str = ""  # what convert saw, for messages: "global_pool: SelectAdaptivePool2d('catavgmax')"

    @property
    def kind(self) -> str:
        """'identity' (feature c is channel c), 'cells' (consecutive groups of ``cells``: what
        channel_importance's grouping already reads right), 'concat' (copies of C side by side),
        or 'concat+cells'."""
        if self.copies == 1:
            return "identity" if self.cells == 1 else "cells"
        return "concat" if self.cells == 1 else "concat+cells"

    def fold(self, weight):
        """(..., features) -> (..., channels): each channel's evidence, the sum of its weights over
        copies and cells (a classifier weight (K, C') or the rows picked for a batch, (N, C'));
        the tensor itself for the identity. A conv classifier's (K, C', 1, ...) weight is
        flattened to (K, C') first."""
        if weight.dim() > 2 and all(size == 1 for size in weight.shape[2:]):
            weight = weight.flatten(1)
        if self.copies == 1 and self.cells == 1:
            return weight
        return weight.reshape(*weight.shape[:-1], self.copies, self.channels, self.cells).sum((-3, -1))


_POOL_MODULES = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
                 nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
_SPATIAL_POOLS = (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd, nn.modules.pooling._LPPoolNd)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _describe(name: str, module: nn.Module) -> str:
    if isinstance(module, nn.Linear):
        what = f"Linear({module.in_features} -> {module.out_features})"
    elif _conv_rank(module) is not None:
        kernel = "x".join(map(str, module.kernel_size))
        what = f"{type(module).__name__}({module.in_channels} -> {module.out_channels}, {kernel})"
    elif hasattr(module, "pool_type") and hasattr(module, "feat_mult"):
        what = f"{type(module).__name__}(pool_type={module.pool_type!r})"
    elif isinstance(module, _POOL_MODULES):
        what = f"{type(module).__name__}(output_size={module.output_size})"
    else:
        what = type(module).__name__
    return f"{name}: {what}" if name else what


def _pool_of(module: nn.Module) -> Optional[Tuple[int, Optional[int]]]:
    """(copies, cells) of a global pooling module (cells None: a grid it does not fix), or None when
    ``module`` is not one. Copies 0: timm's pass-through (``pool_type=''``, no pooling at all)."""
    cls = type(module).__name__
    if hasattr(module, "pool_type") and callable(getattr(module, "feat_mult", None)):  # timm SelectAdaptivePool2d
        if not module.pool_type:
            return 0, None
        inner = getattr(module, "pool", None)
        inner = _pool_of(inner) if isinstance(inner, nn.Module) else None
        return int(module.feat_mult()), (inner[1] if inner else 1)
    copies = 2 if "CatAvgMax" in cls else 1
    if isinstance(module, _POOL_MODULES) or cls in ("AdaptiveAvgMaxPool2d", "AdaptiveCatAvgMaxPool2d"):
        size = module.output_size
        rank = int(cls[-2]) if cls[-1] == "d" and cls[-2] in "123" else 2
        sizes = tuple(size) if isinstance(size, (tuple, list)) else (size,) * rank
        if any(s is None for s in sizes):
            return copies, None
        cells = 1
        for s in sizes:
            cells *= int(s)
        return copies, cells
    if cls in ("FastAdaptiveAvgPool", "FastAdaptiveMaxPool", "FastAdaptiveAvgMaxPool", "FastAdaptiveCatAvgMaxPool"):
        return copies, 1
    return None


def _channels_of(module: nn.Module) -> Optional[int]:
    """The channels of a module's output, where its type says: convs, norms, linears."""
    if _conv_rank(module) is not None:
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, nn.modules.batchnorm._NormBase):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1]
    return None


def _is_weighted(module: nn.Module) -> bool:
    """A module that mixes features with a weight matrix (a linear, a conv, an attention ...)."""
    if isinstance(module, (nn.Linear, nn.Bilinear)) or _conv_rank(module) is not None:
        return True
    if isinstance(module, _NORMS):
        return False
    return any(p.dim() >= 2 for p in module.parameters(recurse=False))


def head_layout(model: nn.Module, classifier: Optional[nn.Module] = None, *,
                strict: bool = True) -> Optional[HeadLayout]:
    """How ``classifier`` (default: :func:`find_classifier`) reads the channels of the map the
    model's head pools, from the modules registered between that map and the classifier (no
    forward pass): a :class:`HeadLayout`, or a ValueError that names the layout and says what to
    pass instead.

    - A global pooling module before the classifier (torchvision's ``avgpool``, timm's
      ``SelectAdaptivePool2d``: 'avg', 'max', 'avgmax', 'catavgmax' and their 'fast' forms, an
      adaptive pool to a grid such as VGG's 7x7), with nothing that mixes features between them
      (flatten, dropout, activations and per-channel norms such as ConvNeXt's LayerNorm2d pass):
      the pool says how (copies, cells).
    - A hidden layer between the pooling and the classifier (an MLP head: torchvision's VGG,
      AlexNet, MobileNetV3; timm's ``head_hidden_size`` heads, MobileNetV3's ``conv_head``):
      refused, as is a head without pooling (timm's ``global_pool=''``).
    - No pooling module (the model pools in ``forward``, as torchvision's DenseNet,
      MobileNetV2, ShuffleNet do): the map's channels are read from the last conv or norm before
      the classifier; the classifier must read one feature per channel (or a visible
      ``nn.Flatten`` of a grid, channel-major); a linear layer there may be a hidden layer or
      act on each pixel, which convert cannot tell apart: refused when ``strict``, else (the
      caller named the classifier) None, as for a classifier that is no submodule of the model.
    """
    model = _unwrap(model)
    if classifier is None:
        classifier = find_classifier(model)
    named = list(model.named_modules())
    index = next((i for i, (_, m) in enumerate(named) if m is classifier), None)
    weight = getattr(classifier, "weight", None)
    if index is None or not index:
        return None  # not a submodule of the model (a probe the caller trains beside it): nothing to see
    name = named[index][0]
    model_name = type(model).__name__
    if _conv_rank(classifier) is not None and not _is_pointwise_conv(classifier):
        raise ValueError(f"the classifier {_describe(name, classifier)} of {model_name} is a conv with a spatial "
                         "kernel: it is no classifier on pooled channels; pass classifier= the final linear layer")
    if weight is None or not hasattr(weight, "dim") or weight.dim() < 2:
        raise ValueError(f"the classifier {name!r} of {model_name} ({type(classifier).__name__}) has no 2-D "
                         "weight: pass classifier= the final linear layer")
    features = int(weight.shape[1])
    # Modules inside a feature block: under an ancestor that holds a spatial conv, other than the
    # root and the classifier's own ancestors (a Sequential holding convs, pooling and the head).
    ancestors = {".".join(name.split(".")[:k]) for k in range(1, len(name.split(".")))}
    spatial_ancestors = set()
    for other_name, other in named:
        if other_name and _is_spatial_conv(other):
            parts = other_name.split(".")
            spatial_ancestors.update(".".join(parts[:k]) for k in range(1, len(parts)))
    spatial_ancestors -= ancestors

    def in_features(unit_name: str) -> bool:
        parts = unit_name.split(".")
        return any(".".join(parts[:k]) in spatial_ancestors for k in range(1, len(parts)))

    # Walk back from the classifier, over units: leaves, modules with weights of their own, pooling
    # modules (whose children are skipped).
    units, skip = [], None
    for unit_name, unit in named[1:index]:
        if skip is not None and unit_name.startswith(skip + "."):
            continue
        skip = unit_name if _pool_of(unit) is not None else None
        if skip is not None or not any(True for _ in unit.children()) or any(
                True for _ in unit.parameters(recurse=False)):
            units.append((unit_name, unit))
    hidden, flatten, pool = [], False, None
    for unit_name, unit in reversed(units):
        if unit_name in ancestors:
            continue
        if in_features(unit_name) or _is_spatial_conv(unit) or isinstance(unit, _SPATIAL_POOLS):
            break  # the feature extractor: the model pools in forward
        if _pool_of(unit) is not None:
            pool = (unit_name, unit)
            break
        if _is_weighted(unit):
            hidden.append((unit_name, unit))
        flatten = flatten or isinstance(unit, nn.Flatten)
    conv_classifier = weight.dim() > 2
    cls_text = _describe(name, classifier)

    if pool is not None:
        pool_name, pool_module = pool
        copies, cells = _pool_of(pool_module)
        pool_text = _describe(pool_name, pool_module)
        if copies == 0:
            raise ValueError(
                f"the head of {model_name} does not pool ({pool_text}): the classifier {cls_text} reads the whole "
                "map, not one value per channel; create the model with global pooling (timm: global_pool='avg', "
                "or reset_classifier(num_classes, global_pool='avg'))")
        if hidden:
            first = hidden[-1]  # the one next to the pooling
            pooled = _in_features(first[1])
            channels = pooled // (copies * cells) if cells and copies and pooled % (copies * cells) == 0 else pooled
            raise ValueError(
                f"the classifier {cls_text} of {model_name} reads a hidden layer ({_describe(*first)}) after the "
                f"pooling ({pool_text}), not the pooled channels: an MLP head gives no channel its own weights, so "
                "CamDrop has no class activation map to follow. Replace the head by global pooling and one linear "
                f"layer on the {channels} channels (nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear({channels}, "
                "num_classes)), or pass classifier= a linear layer that reads the pooled channels")
        if cells is None:
            raise ValueError(f"cannot tell how many values per channel {pool_text} of {model_name} gives (an output "
                             "size of None keeps the input's): pass classifier= a layer on globally pooled channels")
        if features % (copies * cells):
            raise ValueError(f"the classifier {cls_text} of {model_name} reads {features} features, not a multiple "
                             f"of the {copies * cells} values per channel that {pool_text} gives: pass classifier= "
                             "the layer that reads the pooled channels")
        return HeadLayout(name, features // (copies * cells), features, copies, cells, pool_text)

    # No pooling module: the model pools (or flattens) in its forward, or the classifier is a conv.
    if conv_classifier:
        return HeadLayout(name, features, features, 1, 1, "the conv classifier's own pixels")
    linear_hidden = [u for u in hidden if not _conv_rank(u[1])]
    if linear_hidden:
        if not strict:
            return None
        first = linear_hidden[0]  # the one next to the classifier
        raise ValueError(
            f"cannot tell how the classifier {cls_text} of {model_name} reads the map's channels: no pooling module "
            f"comes before it, and {_describe(*first)} between them may be a hidden layer (an MLP head) or act on "
            "each pixel. Make the pooling a module (nn.AdaptiveAvgPool2d(1) before the head) so that convert sees "
            "it, or pass classifier= a linear layer that reads the pooled channels")
    channels = None
    for unit_name, unit in [u for u in reversed(units) if u[0] not in ancestors]:
        channels = _channels_of(unit)
        if channels is not None:
            break
    if channels is not None and channels == features:
        return HeadLayout(name, channels, features, 1, 1, "pooled in forward")
    if channels is not None and flatten and features % channels == 0:
        return HeadLayout(name, channels, features, 1, features // channels, "a flattened map")
    if not strict:
        return None
    seen = f"the map before it has {channels} channels" if channels else "no conv or norm before it shows the channels"
    raise ValueError(
        f"cannot tell how the classifier {cls_text} of {model_name} reads the map's channels: it takes {features} "
        f"features, {seen}, and no pooling module says how they relate (the model pools or concatenates in "
        "forward). Make the pooling a module (nn.AdaptiveAvgPool2d(1)) so that convert sees it, or pass "
        "classifier= explicitly to guide by its weights as given (groups of consecutive features per channel)")


def _in_features(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else getattr(module, "in_channels", 0)


def _unsupported_by_layers(layout: HeadLayout, classifier: nn.Module, model_name: str) -> Optional[str]:
    """Why this version's CamDrop layers cannot take ``layout`` (they read a 2-D weight and average
    consecutive features), or None. Layers that declare ``folds_head_layout`` take every layout
    (see HeadLayout.fold)."""
    if getattr(CamDropNd, "folds_head_layout", False):
        return None
    if classifier.weight.dim() > 2:
        return (f"the classifier of {model_name} is a 1x1 convolution ({_describe(layout.name, classifier)}; "
                f"{layout.pool}): its weight is each channel's own, but this version's CamDrop layers read a 2-D "
                "(num_classes, features) weight. Replace it by an nn.Linear on the pooled channels, or guide "
                "CamDrop layers explicitly (layer(x, cam, alpha))")
    if layout.copies > 1:
        return (f"the head of {model_name} concatenates {layout.copies} pooled copies of its {layout.channels} "
                f"channels ({layout.pool}; the classifier {layout.name!r} reads {layout.features} features): "
                "channel c's evidence is the sum of its weights in each copy, which this version's CamDrop layers "
                "cannot fold (they would average channel c with the next channel's weights). Create the model "
                "with one value per channel (timm: global_pool='avg', 'max' or 'avgmax', not 'catavgmax')")
    return None


# ---------------------------------------------------------------------------------------------
# convert
# ---------------------------------------------------------------------------------------------
_CamDropAfter = placement.CamDropAfter  # (the hook's old name: models pickled before 0.3 load)


def _hook_target(module: nn.Module, name: str) -> Tuple[nn.Module, str]:
    """A plain Sequential's output is its last child's: hook that child (a container cannot get a
    ``camdrop`` child without running it)."""
    while isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward and len(module):
        last = list(module.named_children())[-1]
        module, name = last[1], f"{name}.{last[0]}"
    if isinstance(module, _CONTAINERS):
        raise ValueError(f"cannot hook {name!r}, a {type(module).__name__} (a container whose forward runs its "
                         "children, or none): name the module inside it whose output should be dropped")
    return module, name


def convert(
    model: nn.Module,
    drop_prob: float = 0.1,
    block_size: Optional[int] = None,
    where: Where = None,
    classifier: Optional[Union[nn.Module, str]] = None,
    *,
    stage_scaling: bool = True,
    rank: Optional[int] = None,
    **options,
) -> nn.Module:
    """Add bound CamDrop layers to ``model`` at the places ``where`` names; returns ``model``.

    ``where`` is described in :func:`conversion_places` (default: every block of the last two
    stages). ``classifier`` (a module or its name) guides the layers; by default
    :func:`find_classifier` finds it. ``block_size`` None takes 3 in the last stage, 5 in the
    one before and 7 elsewhere (timm's ResNet choice); with ``stage_scaling`` a place ``s``
    stages before the last gets ``drop_prob / 4**s`` (the authors' rule), which
    :func:`set_drop_prob` keeps. Other keywords go to the CamDrop layers. ``state_dict`` keys do
    not change and eval mode is the identity; convert before wrapping in DDP or torch.compile.
    """
    drop_prob = validation.check_probability("drop_prob", drop_prob)
    if block_size is not None:
        validation.check_block_size(block_size)
    validation.check_bool("stage_scaling", stage_scaling)
    if "drop_prob_scale" in options:
        raise TypeError("convert sets drop_prob_scale itself (stage_scaling); pass stage_scaling=False for one rate")
    model_ = _unwrap(model)
    named_classifier = classifier is not None
    self_guided = options.get("guidance", "classifier") == "self"
    if self_guided:
        if classifier is not None:
            raise ValueError("guidance='self' uses no classifier: pass classifier=None")
    elif isinstance(classifier, str):
        try:
            classifier = model_.get_submodule(classifier)
        except AttributeError as exc:
            raise ValueError(f"classifier {classifier!r} is not a submodule of {type(model_).__name__}: pass the "
                             "final linear layer or its name") from exc
    elif classifier is None:
        classifier = find_classifier(model_)
    if not self_guided and not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be a module (the final nn.Linear) or its name; got "
                        f"{type(classifier).__name__}")
    # The classifier's name, so that the layers follow a head replaced later (fine-tuning).
    classifier_path = None if self_guided else next((n for n, m in model_.named_modules() if m is classifier), None)
    places = conversion_places(model_, where, rank=rank)
    # How the classifier reads the pooled channels (refused layouts raise here), before any change.
    layout = head_layout(model_, classifier, strict=not named_classifier)
    if layout is not None:
        reason = _unsupported_by_layers(layout, classifier, type(model_).__name__)
        if reason is not None:
            raise ValueError(reason)
        if getattr(CamDropNd, "folds_head_layout", False):
            options = dict(options, head_layout=layout)
    dropblocks = _dropblock_types()
    plans = []  # everything is checked before the model changes
    taken = {}  # the module each place drops after -> the place's name (two places must not share one)
    for place in places:
        module = model_.get_submodule(place.name)
        scale = 4.0 ** -place.stage if stage_scaling and place.stage is not None else 1.0
        size = block_size if block_size is not None else _BLOCK_SIZE_FROM_LAST.get(place.stage, _UNSTAGED_BLOCK_SIZE)
        if isinstance(module, CamDropNd):
            raise ValueError(f"{place.name!r} is already a CamDrop layer: convert a model once (set_drop_prob "
                             "changes the rate)")
        target, target_name = (module, place.name) if place.replace else _hook_target(module, place.name)
        if not place.replace and isinstance(getattr(target, "camdrop", None), CamDropNd):
            raise ValueError(f"{target_name!r} already has a CamDrop layer: convert a model once (set_drop_prob "
                             "changes the rate)")
        if id(target) in taken:
            raise ValueError(f"places {taken[id(target)]!r} and {place.name!r} both drop the output of "
                             f"{target_name!r}: name it once")
        taken[id(target)] = place.name
        layer = _LAYERS[place.rank](drop_prob * scale, size, drop_prob_scale=scale, **options)
        if not self_guided:
            layer.guide.bind(classifier, path=classifier_path)
        plans.append((place, module, layer))
    replaced = []  # DropBlock layers whose slots CamDrop takes
    for place, module, layer in plans:
        if place.replace:
            if dropblocks and isinstance(module, dropblocks):
                replaced.append(place.name)
            parent_name, _, attr = place.name.rpartition(".")
            setattr(model_.get_submodule(parent_name), attr, layer)
        else:
            target, target_name = _hook_target(module, place.name)
            placement.attach(model_, target_name, target, layer)
    if replaced:
        warnings.warn(
            f"convert replaced {len(replaced)} DropBlock layer{'s' if len(replaced) > 1 else ''} by CamDrop in "
            f"their slots ({_shortlist(replaced)}): the model was created with DropBlock (timm: drop_block_rate, "
            "train.py --drop-block), and CamDrop takes its place rather than running beside it. Create the model "
            "without it to silence this warning", UserWarning, stacklevel=2)
    if dropblocks:
        left = [n for n, m in model_.named_modules() if isinstance(m, dropblocks)]
        if left:
            warnings.warn(
                f"{len(left)} DropBlock layer{'s' if len(left) > 1 else ''} outside the converted places still "
                f"run beside CamDrop ({_shortlist(left)}): convert those blocks too (where=) or create the model "
                "without DropBlock (timm: drop_block_rate=0)", UserWarning, stacklevel=2)
    return model


def _shortlist(names: Sequence[str], limit: int = 4) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _library(model: nn.Module) -> Optional[str]:
    try:
        from timm.models.resnet import ResNet as TimmResNet

        if isinstance(model, TimmResNet):
            return "timm"
    except ImportError:
        pass
    try:
        from torchvision.models.resnet import ResNet as TorchvisionResNet

        if isinstance(model, TorchvisionResNet):
            return "torchvision"
    except ImportError:
        pass
    return None


def convert_resnet(
    model: nn.Module,
    *,
    drop_prob: float = 0.1,
    block_size: Optional[int] = None,
    stages: Sequence[int] = (3, 4),
    stage_scaling: bool = True,
    **camdrop_kwargs,
) -> nn.Module:
    """Add CamDrop to the residual blocks of ``stages`` of a timm or torchvision ResNet; returns ``model``.

    A preset of :func:`convert`: one layer per block, in timm's ``drop_block`` slot (after the BN
    of the 3x3 conv: ``bn2`` in a Bottleneck, ``bn1`` in a BasicBlock; a hook on that BN for
    torchvision). ``block_size`` None takes 7, 7, 5, 3 for stages 1-4; with ``stage_scaling``
    stage s gets ``drop_prob / 4**(4 - s)`` (the authors' rule). Other keywords go to the layers.
    """
    library = _library(model)
    if library is None:
        raise ValueError(f"convert_resnet supports {SUPPORTED}; got {type(model).__name__} "
                         "(camdrop_kernels.convert handles other CNNs)")
    stages = tuple(stages)
    if not stages or any(not validation.is_int(s) or not 1 <= s <= 4 for s in stages) or len(set(stages)) != len(stages):
        raise ValueError(f"stages must be distinct ints in 1..4; got {stages!r}")
    classifier = model.get_classifier() if library == "timm" else model.fc
    if not isinstance(classifier, nn.Linear):
        raise ValueError(f"the model's classifier must be an nn.Linear to guide CamDrop; got "
                         f"{type(classifier).__name__} (was it reset with num_classes=0?)")
    where = []
    for stage in sorted(stages):
        for index, block in enumerate(getattr(model, f"layer{stage}")):
            where.append(_slot(block, f"layer{stage}.{index}"))
    return convert(model, drop_prob, block_size, where, classifier, stage_scaling=stage_scaling, **camdrop_kwargs)


__all__ = ["convert", "convert_resnet", "conversion_places", "find_classifier", "head_layout", "HeadLayout", "Place",
           "DEFAULT_BLOCK_SIZE"]
