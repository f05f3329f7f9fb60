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

import inspect
import re
import warnings
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from . import placement, structure, validation
from .heads import HeadLayout, find_classifier, head_layout, layout_for
from .nn import CamDrop1d, CamDrop2d, CamDrop3d, CamDropNd
from .placement import unwrap as _unwrap
from .tokens import GridMap, TokenMap

# timm's drop_block_rate uses 5 in stage 3 and 3 in stage 4; DropBlock's default 7 before that.
DEFAULT_BLOCK_SIZE = {1: 7, 2: 7, 3: 5, 4: 3}
# The same, counted from the last stage (0 = last): what convert uses for any model.
_BLOCK_SIZE_FROM_LAST = {0: 3, 1: 5}
_UNSTAGED_BLOCK_SIZE = 7
_TOKEN_BLOCK_SIZE = 3  # a ViT's patch grid (14x14 at 224 with 16-pixel patches): as a CNN's last stage
DEFAULT_STAGES = 2
SUPPORTED = ("timm ResNet-family models (timm.models.resnet.ResNet: resnet*, resnext*, seresnet*, wide_resnet*, "
             "...) and torchvision ResNets (torchvision.models.ResNet: resnet18-152, resnext*, wide_resnet*)")
_LAYERS = {1: CamDrop1d, 2: CamDrop2d, 3: CamDrop3d}

Where = Union[None, int, str, nn.Module, Sequence[Union[str, nn.Module]]]


class Place(NamedTuple):
    """Where ``convert`` puts one CamDrop layer (see :func:`conversion_places`)."""

    name: str  # the module whose output is dropped (the layer replaces it when ``replace``)
    rank: int  # 1, 2 or 3: the map's spatial axes
    stage: Optional[int]  # counted from the last stage (0 = last); None when outside the known stages
    replace: bool  # an nn.Identity slot (e.g. timm's drop_block), or a DropBlock layer, that the layer replaces
    tokens: Optional[Tuple[int, Tuple[int, int]]] = None  # a ViT place: (prefix tokens, patch grid (h, w))
    nhwc: bool = False  # the place outputs an (N, H, W, C) map (Swin, MambaOut: structure.nhwc_plan)


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
    names = [n for n, m in model.named_modules() if n and not structure.is_container(m) and structure.has_spatial_conv(m)
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
            if not structure.has_spatial_conv(module):
                continue  # a pooling or transition child that starts the level, a stem's norm: no block
            for block in structure.blocks(module):
                places.append(_slot(block, names[block]))
    if not places:  # (never a model converted to nothing without a word)
        raise ValueError(
            f"convert found no conv blocks in the last {k} stage{'s' * (k != 1)} of {type(model).__name__} as it "
            f"reads them ({', '.join(repr(lv[-1]) for lv in levels[-k:] if lv)}): no block there holds a spatial "
            "convolution (a transformer's or MLP's stages, which CamDrop does not cover beyond the ViT, Swin and "
            "MambaOut families; or stages convert misread). Name the modules whose outputs are conv feature maps "
            f"(N, C, H, W) with where=, if any{_candidates(model)}")
    return places


def _slot(block: nn.Module, name: str) -> str:
    """Where in a block the layer goes: the library's own slot where it has one (timm's
    ``drop_block``, empty or holding timm's DropBlock2d, which the layer replaces; a DropBlock
    elsewhere in the block, e.g. in the norm-act of timm ByobNet's 3x3 conv; torchvision ResNet
    blocks: the BN after the 3x3 conv, as convert_resnet), else the block's output."""
    dropblocks = structure.dropblock_types()
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


def _token_places(model: nn.Module, vit: structure.VitPlan, where: Where) -> List[Place]:
    """A vision transformer's places: the outputs of its last blocks (where None: the last third;
    an int k: the last k), or the modules named, each an (N, L, C) token map."""
    depth = len(vit.blocks)
    if where is None or validation.is_int(where):
        k = max(1, depth // 3) if where is None else where
        if not 1 <= k <= depth:
            raise ValueError(f"where={k} asks for the last {k} blocks, but {type(model).__name__} has {depth}")
        names = vit.blocks[-k:]
    else:
        _check_where(where, "blocks")
        names = _named_places(model, where)
    return [Place(name, 2, None, False, (vit.prefix_at(name), vit.grid)) for name in names]


def _check_where(where: Where, unit: str) -> None:
    """``where`` other than None or an int: a module name or pattern, a module, or a list of these."""
    if isinstance(where, bool) or not isinstance(where, (str, nn.Module, list, tuple)):
        raise TypeError(f"where must be None, an int (the last k {unit}), a module name or pattern, a module, or a "
                        f"list of these; got {type(where).__name__}")


def _grid_places(model: nn.Module, plan: structure.GridPlan, where: Where) -> List[Place]:
    """The places of a model whose blocks output (N, H, W, C) maps: the blocks of the last k stages
    (where None: 2), or the blocks, their Sequentials and stages named. Other modules of such a model
    are refused: their outputs' layout is not known (a Swin's stem and norms are (N, H, W, C), its
    convs (N, C, H, W))."""
    stages = plan.stages
    if where is None or validation.is_int(where):
        k = DEFAULT_STAGES if where is None else where
        if not 1 <= k <= len(stages):
            raise ValueError(f"where={k} asks for the last {k} stages, but {type(model).__name__} has {len(stages)}")
        return [Place(name, 2, len(stages) - 1 - index, False, None, True)
                for index, stage in enumerate(stages) if index >= len(stages) - k for name in stage]
    _check_where(where, "stages")
    stage_of = {}  # every block and grid container -> its stage, counted from the last
    for index, stage in enumerate(stages):
        for name in stage:
            stage_of[name] = len(stages) - 1 - index
    for name in plan.containers:
        inside = [stage_of[b] for b in stage_of if b.startswith(name + ".")]
        if inside:
            stage_of[name] = inside[0]
    places = []
    for name in _named_places(model, where):
        if name not in stage_of:
            raise ValueError(
                f"{type(model).__name__} keeps (N, H, W, C) maps in its blocks and (N, C, H, W) ones elsewhere: convert "
                f"knows the layout of its blocks and stages only, and {name!r} is neither. Name blocks or stages "
                f"(e.g. {stages[-1][0]!r}, or where=1 for the last stage's blocks)")
        places.append(Place(name, 2, stage_of[name], False, None, True))
    return places


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

    Vision transformers (timm's ``VisionTransformer``: ViT, DeiT, register tokens; torchvision's
    ``VisionTransformer``) have one resolution and no stages: ``where=k`` takes the outputs of the
    last k blocks (default: the last third), each a token place (the patch tokens as an (N, C, h, w)
    map, the class and register tokens untouched).

    Models whose blocks keep (N, H, W, C) maps (timm's ``output_fmt="NHWC"`` models: Swin, SwinV2,
    MambaOut, Sequencer; torchvision's Swin) have stages of blocks: ``where=k`` takes every block of
    the last k stages, each seen as its (N, C, H, W) channels_last view.
    """
    if rank is not None and (isinstance(rank, bool) or rank not in _LAYERS):
        raise ValueError(f"rank must be 1, 2 or 3; got {rank!r}")
    model = _unwrap(model)
    vit = structure.vit_plan(model)
    if vit is not None:
        return _token_places(model, vit, where)
    grid = structure.nhwc_plan(model)
    if grid is not None:
        return _grid_places(model, grid, where)
    levels = structure.levels(model)
    if where is None:
        where = DEFAULT_STAGES
    if validation.is_int(where):
        if levels is None:
            raise ValueError(
                f"convert cannot find the stages of {type(model).__name__} (no timm feature_info, no torchvision "
                f"layer1..layer4 / features / trunk_output): pass where= the modules to drop after, as names, "
                f"glob or 're:' patterns{_candidates(model)}")
        names = _stage_places(model, levels, where)
    else:
        _check_where(where, "stages")
        names = _named_places(model, where)
    return _map_places(model, names, levels, rank)


def _map_places(model: nn.Module, names: List[str], levels: Optional[List[List[str]]],
                rank: Optional[int]) -> List[Place]:
    """Places on conv feature maps (N, C, *S), the map's rank read from the place unless given."""
    places = []
    for name in names:
        module = model.get_submodule(name)
        if isinstance(module, nn.Linear):
            raise ValueError(f"{name!r} is an nn.Linear: CamDrop drops blocks of conv feature maps (N, C, *S); name "
                             "a conv block or stage instead")
        place_rank = rank if rank is not None else structure.place_rank(model, name)
        if place_rank is None:
            raise ValueError(f"cannot tell the rank of the map at {name!r} (no Conv1d/2d/3d in or before it): pass "
                             "rank=1, 2 or 3")
        places.append(Place(name, place_rank, structure.stage_of(name, levels),
                            isinstance(module, (nn.Identity,) + structure.dropblock_types())))
    return places


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
    if isinstance(module, structure.CONTAINERS):
        # (also a subclass with a forward of its own: a `camdrop` child would join its iteration)
        raise ValueError(f"cannot hook {name!r}, a {type(module).__name__} (a container whose forward runs its "
                         "children, or none): name the module inside it whose output should be dropped")
    return module, name


def _side_inputs(module: nn.Module) -> List[str]:
    """The parameters ``module.forward`` requires beside its input: PVT v2's and Twins' blocks take
    the grid's size, as their output is tokens (N, L, C), not a map (optional ones, a ResNet
    block's ``shortcut=None``, do not count)."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):  # (a builtin or C++ forward: nothing to read)
        return []
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p.name for p in parameters if p.kind in positional and p.default is inspect.Parameter.empty]
    return required[1:]


def _refuse_token_blocks(model: nn.Module, found: List[Tuple[str, nn.Module, List[str]]]) -> None:
    """Places after blocks that take their grid as an argument fail at the first forward (tokens,
    not a map): refuse them here, suggesting the stages that hold them (their outputs are maps)."""
    if not found:
        return
    stages = [name for level in (structure.levels(model) or []) for name in level]
    holders = sorted({s for name, _, _ in found for s in stages if name.startswith(s + ".")})
    name, module, side = found[0]
    hint = (f"name the stages that hold them instead (where={holders!r}: a stage that ends with a map)" if holders
            else "name modules whose outputs are feature maps")
    raise ValueError(
        f"convert would drop after {len(found)} module{'s' * (len(found) != 1)} that take {', '.join(side)} beside "
        f"their input ({name!r}, a {type(module).__name__}, and others): transformer blocks whose outputs are "
        f"tokens (N, L, C), not feature maps, so CamDrop cannot run there; pass where= and {hint}")


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
    vit = structure.vit_plan(model_)
    if vit is not None or structure.nhwc_plan(model_) is not None:
        if "guidance" not in options and classifier is None:
            # Vision transformers learn to read the label off a classifier-guided mask (their
            # residual stream is signed: the zeroed top channels of the true class are a visible
            # code): measured, examples/results/evidence.md. Their default is self guidance (a
            # classifier named by the caller asks for classifier guidance: it gets it, warned).
            options = dict(options, guidance="self")
        elif options.get("guidance", "classifier") == "classifier":
            warnings.warn(
                "convert: classifier guidance on a vision transformer's tokens (or a Swin-style model's maps): in "
                "the evidence experiment a "
                "ViT trained so learnt to read the label off CamDrop's mask and fell to near chance in "
                "evaluation (examples/results/evidence.md). The default for ViTs is guidance='self'; check a "
                "classifier-guided model with camdrop_kernels.label_readback(model, images, labels)",
                UserWarning, stacklevel=2)
    dense = structure.dense_predictor(model_)
    if dense is not None:
        # A segmentation head's classifier is a 1x1 conv predicting each pixel (a detector's, each box),
        # and the targets are masks (boxes): no image-level label exists to guide by. The default is
        # self guidance, as for ViTs; a classifier is only taken when named, and not a per-pixel conv.
        if classifier is None and "guidance" not in options:
            options = dict(options, guidance="self")
        elif classifier is None and options["guidance"] == "classifier":
            raise ValueError(
                f"{dense} predicts per pixel or per box: CamDrop's classifier guidance follows one class label "
                "per image (the head's weights for it), which its training does not have. Use guidance='self' "
                "(convert's default for these models), or add an image-level linear head and pass it as "
                "classifier=")
        named = classifier
        if isinstance(classifier, str):
            try:
                named = model_.get_submodule(classifier)
            except AttributeError:
                named = None  # (a name that is no submodule is refused below, with the names)
        weight = getattr(named, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.dim() > 2:
            raise ValueError(
                f"{dense}: the classifier {classifier if isinstance(classifier, str) else type(named).__name__} "
                "is a conv that predicts per pixel, not an image-level head; use guidance='self'")
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
        if vit is not None and vit.classifier is None:
            raise ValueError(
                f"{type(model_).__name__} has {vit.pool}: no linear layer reads one feature per channel, so classifier "
                "guidance has no weights to follow. Use guidance='self' (convert's default for vision transformers), "
                "or pass classifier= a linear layer on the pooled channels")
        classifier = find_classifier(model_)
    if not self_guided and not isinstance(classifier, nn.Module):
        raise TypeError(f"classifier must be a module (the final nn.Linear) or its name; got "
                        f"{type(classifier).__name__}")
    # The classifier's name, so that the layers follow a head replaced later (fine-tuning).
    classifier_path = None if self_guided else next((n for n, m in model_.named_modules() if m is classifier), None)
    places = conversion_places(model_, where, rank=rank)
    # How the classifier reads the pooled channels (refused layouts raise here), before any change.
    layout = None if self_guided else layout_for(model_, classifier, strict=not named_classifier)
    norm = model_.get_submodule(layout.norm) if layout is not None and layout.norm else None
    dropblocks = structure.dropblock_types()
    plans = []  # everything is checked before the model changes
    taken = {}  # the module each place drops after -> the place's name (two places must not share one)
    token_blocks: List[Tuple[str, nn.Module, List[str]]] = []  # places after blocks that output tokens
    for place in places:
        module = model_.get_submodule(place.name)
        scale = 4.0 ** -place.stage if stage_scaling and place.stage is not None else 1.0
        size = block_size if block_size is not None else _BLOCK_SIZE_FROM_LAST.get(place.stage, _UNSTAGED_BLOCK_SIZE)
        if place.tokens is not None and block_size is None:
            size = _TOKEN_BLOCK_SIZE
        if isinstance(module, (CamDropNd, TokenMap, GridMap)):
            raise ValueError(f"{place.name!r} is already a CamDrop layer: convert a model once (set_drop_prob "
                             "changes the rate)")
        target, target_name = (module, place.name) if place.replace else _hook_target(module, place.name)
        if not place.replace and isinstance(getattr(target, "camdrop", None), (CamDropNd, TokenMap, GridMap)):
            raise ValueError(f"{target_name!r} already has a CamDrop layer: convert a model once (set_drop_prob "
                             "changes the rate)")
        if id(target) in taken:
            raise ValueError(f"places {taken[id(target)]!r} and {place.name!r} both drop the output of "
                             f"{target_name!r}: name it once")
        taken[id(target)] = place.name
        side = _side_inputs(target) if place.tokens is None and not place.nhwc else []
        if side:
            token_blocks.append((target_name, target, side))
        layer = _LAYERS[place.rank](drop_prob * scale, size, drop_prob_scale=scale, **options)
        if not self_guided:
            layer.guide.bind(classifier, path=classifier_path, layout=layout, norm=norm)
        if place.tokens is not None:
            layer = TokenMap(layer, *place.tokens)
        elif place.nhwc:
            layer = GridMap(layer)
        plans.append((place, module, layer))
    _refuse_token_blocks(model_, token_blocks)
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


def unconvert(model: nn.Module) -> nn.Module:
    """Remove every CamDrop layer from ``model``, in place; returns ``model``.

    Layers ``convert`` hooked after a module lose their hook and ``camdrop`` child; layers in a slot
    (timm's ``drop_block``, a replaced DropBlock, a layer of the model's own) give way to
    ``nn.Identity``. Weights and ``state_dict`` keys are untouched: the result is the plain model,
    e.g. for ``torch.jit.script`` (which cannot compile the layers' Python) or for training without
    CamDrop."""
    validation.check_module("model", model)
    root = _unwrap(model)
    placement.restore(root)  # (a module swap may have dropped a hook and kept its camdrop child)
    placement.detach_all(root)
    for module in list(root.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, (CamDropNd, TokenMap, GridMap)):
                setattr(module, name, nn.Identity())
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


__all__ = ["convert", "convert_resnet", "conversion_places", "unconvert", "find_classifier", "head_layout", "HeadLayout", "Place",
           "DEFAULT_BLOCK_SIZE"]
