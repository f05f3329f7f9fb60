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
    replace: bool  # an nn.Identity slot (e.g. timm's drop_block) that the layer replaces


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
    ``trunk_output``) Sequential split at each child that downsamples (the stem is level 0)."""
    if all(isinstance(getattr(model, f"layer{i}", None), nn.Module) for i in range(1, 5)):
        return [[f"layer{i}"] for i in range(1, 5)]
    for attr in ("features", "trunk_output"):
        trunk = getattr(model, attr, None)
        if isinstance(trunk, nn.Sequential):
            levels: List[List[str]] = []
            for name, child in trunk.named_children():
                if not _has_spatial_conv(child):
                    continue  # a 1x1 head conv, pooling, ...
                if not levels or _downsamples(child):
                    levels.append([])
                levels[-1].append(f"{attr}.{name}")
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
def _pattern(text: str) -> "re.Pattern[str]":
    """A module-name pattern: ``re:<regex>`` (full match), else a glob over dotted names in which
    ``*`` and ``?`` stay within one name segment, ``**`` spans any number of them, and ``[...]``
    is a character class; a name without these characters matches itself only."""
    if text.startswith("re:"):
        return re.compile(text[3:])
    out, i = [], 0
    while i < len(text):
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
            end = text.find("]", i + 1)
            if end < 0:
                out.append(re.escape(ch))
            else:
                body = text[i + 1:end]
                out.append("[^" + re.escape(body[1:]) + "]" if body.startswith("!") else "[" + re.escape(body) + "]")
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
            for block in _blocks(model.get_submodule(member)):
                places.append(_slot(block, names[block]))
    return places


def _slot(block: nn.Module, name: str) -> str:
    """Where in a block the layer goes: the library's own slot where it has one (timm's
    ``drop_block``; torchvision ResNet blocks: the BN after the 3x3 conv, as convert_resnet), else
    the block's output."""
    if isinstance(getattr(block, "drop_block", None), (nn.Identity, CamDropNd)):
        return f"{name}.drop_block"
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
      at each downsampling child (1x1 head convs left out). A stage's blocks are the composite
      children of a plain Sequential stage (or the stage itself if it has none), else a run of
      two or more same-class children (timm RegNet), else the same inside a ``blocks``-like
      Sequential child (timm ConvNeXt), else the stage itself. In each block the layer goes in the library's own slot where it has one (timm's ``drop_block``;
      the BN after a torchvision ResNet block's 3x3 conv), else on the block's output;
    - a module name (``"layer4.1.bn1"``), a glob (``"stages.3.blocks.*"``: ``*`` and ``?``
      within one dotted segment, ``**`` across segments, ``[...]`` a class), a regex
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
        places.append(Place(name, place_rank, _stage_of(name, levels), isinstance(module, nn.Identity)))
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


def find_classifier(model: nn.Module) -> nn.Module:
    """The final nn.Linear that guides CamDrop: timm's ``get_classifier()``, else torchvision's
    ``fc`` / ``classifier`` / ``head`` / ``heads`` (the last Linear inside a Sequential), else
    the model's last nn.Linear."""
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
    linear = head if isinstance(head, nn.Linear) else _last_linear(head)
    if linear is None:
        raise ValueError(f"the model's classifier ({name}{where_from}) is a {type(head).__name__}, not an nn.Linear "
                         "(was the model created with num_classes=0?): pass classifier= the final linear layer")
    return linear


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
    for place, module, layer in plans:
        if place.replace:
            parent_name, _, attr = place.name.rpartition(".")
            setattr(model_.get_submodule(parent_name), attr, layer)
        else:
            target, target_name = _hook_target(module, place.name)
            placement.attach(model_, target_name, target, layer)
    return model


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


__all__ = ["convert", "convert_resnet", "conversion_places", "find_classifier", "Place", "DEFAULT_BLOCK_SIZE"]
