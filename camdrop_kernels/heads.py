"""The classifier that guides CamDrop, and how its input features relate to a map's channels.

The channel importance reads the classifier's weight row for the sample's class. That row is
per channel only when the head sees the channels in order, once, unscaled. :func:`head_layout`
reads the modules between the pooled map and the classifier (no forward pass) and says how:
pooled copies concatenated (timm's "catavgmax": [avg(C), max(C)]), a pooled grid flattened
(VGG's 7x7), a 1x1-conv classifier, and a LayerNorm between pooling and the head whose per-channel
gain is folded in (ConvNeXt's head norm, a ViT's final norm: the CAM stays the class score's
decomposition up to a per-sample positive scale and shift). MLP heads and heads without pooling
are refused with advice.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from torch import nn

from . import structure
from .placement import unwrap

# Every refusal of a head ends with the way round it that needs no head.
SELF_ADVICE = "; or convert(model, guidance='self'): guided by the map's own channel means, it needs no classifier"


def _last_linear(module: nn.Module) -> Optional[nn.Module]:
    found = None
    for m in module.modules():
        if isinstance(m, nn.Linear):
            found = m
    return found


def _last_pointwise_conv(module: nn.Module) -> Optional[nn.Module]:
    found = None
    for m in module.modules():
        if structure.is_pointwise_conv(m):
            found = m
    return found


def find_classifier(model: nn.Module) -> nn.Module:
    """The final layer that guides CamDrop: timm's ``get_classifier()``, else torchvision's
    ``fc`` / ``classifier`` / ``head`` / ``heads`` (the last Linear inside a Sequential, else its
    last 1x1 conv: a conv classifier such as SqueezeNet's), else the model's last nn.Linear.
    Whether its layout can guide CamDrop is :func:`head_layout`'s question."""
    model = unwrap(model)
    name = type(model).__name__
    head, where_from = None, None
    get = getattr(model, "get_classifier", None)
    if callable(get):
        try:
            head, where_from = get(), ".get_classifier()"
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
                             "layer (a module with a 2-D (num_classes, features) weight)" + SELF_ADVICE)
        return linear
    linear = head if isinstance(head, nn.Linear) else (_last_linear(head) or _last_pointwise_conv(head))
    if linear is None:
        raise ValueError(f"the model's classifier ({name}{where_from}) is {type(head).__name__}, not an nn.Linear "
                         "(was the model created with num_classes=0?): pass classifier= the final linear layer"
                         + SELF_ADVICE)
    return linear


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
    norm: str = ""  # a LayerNorm between the pooling and the classifier, whose gain is folded in ("": none)

    @property
    def kind(self) -> str:
        """'identity' (feature c is channel c), 'cells' (consecutive groups of ``cells``: what
        channel_importance's grouping already reads right), 'concat' (copies of C side by side),
        or 'concat+cells'."""
        if self.copies == 1:
            return "identity" if self.cells == 1 else "cells"
        return "concat" if self.cells == 1 else "concat+cells"

    def fold(self, weight: torch.Tensor, gain: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(..., features) -> (..., channels): each channel's evidence, the sum of its weights over
        copies and cells (a classifier weight (K, C') or the rows picked for a batch, (N, C')),
        each feature first scaled by the ``gain`` of :attr:`norm` (the features the norm
        multiplies: logit = w . (g * z_hat) + b, so channel c's evidence is w_c g_c); the tensor
        itself for the identity. A conv classifier's (K, C', 1, ...) weight is flattened to
        (K, C') first."""
        if weight.dim() > 2 and all(size == 1 for size in weight.shape[2:]):
            weight = weight.flatten(1)
        if gain is not None:
            g = gain.detach().to(weight.dtype).reshape(-1)
            if g.numel() == self.channels and self.features != self.channels:  # (a gain per channel, before
                g = g.repeat_interleave(self.cells).repeat(self.copies)      # the grid and the copies)
            weight = weight * g
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
    elif structure.conv_rank(module) is not None:
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
    if structure.conv_rank(module) is not None:
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
    if isinstance(module, (nn.Linear, nn.Bilinear)) or structure.conv_rank(module) is not None:
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
    model = unwrap(model)
    if classifier is None:
        classifier = find_classifier(model)
    named = list(model.named_modules())
    index = next((i for i, (_, m) in enumerate(named) if m is classifier), None)
    weight = getattr(classifier, "weight", None)
    if index is None or not index:
        return None  # not a submodule of the model (a probe the caller trains beside it): nothing to see
    name = named[index][0]
    model_name = type(model).__name__
    if structure.conv_rank(classifier) is not None and not structure.is_pointwise_conv(classifier):
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
        if other_name and structure.is_spatial_conv(other):
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
    hidden, flatten, pool, norm = [], False, None, ""
    for unit_name, unit in reversed(units):
        if unit_name in ancestors:
            continue
        if not norm and not hidden and is_layer_norm(unit):
            norm = unit_name
        if in_features(unit_name) or structure.is_spatial_conv(unit) or isinstance(unit, _SPATIAL_POOLS):
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
                "or reset_classifier(num_classes, global_pool='avg'))" + SELF_ADVICE)
        if hidden:
            first = hidden[-1]  # the one next to the pooling
            pooled = _in_features(first[1])
            channels = pooled // (copies * cells) if cells and copies and pooled % (copies * cells) == 0 else pooled
            raise ValueError(
                f"the classifier {cls_text} of {model_name} reads a hidden layer ({_describe(*first)}) after the "
                f"pooling ({pool_text}), not the pooled channels: an MLP head gives no channel its own weights, so "
                "CamDrop has no class activation map to follow. Replace the head by global pooling and one linear "
                f"layer on the {channels} channels (nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear({channels}, "
                "num_classes)), or pass classifier= a linear layer that reads the pooled channels" + SELF_ADVICE)
        if cells is None:
            raise ValueError(f"cannot tell how many values per channel {pool_text} of {model_name} gives (an output "
                             "size of None keeps the input's): pass classifier= a layer on globally pooled channels")
        if features % (copies * cells):
            raise ValueError(f"the classifier {cls_text} of {model_name} reads {features} features, not a multiple "
                             f"of the {copies * cells} values per channel that {pool_text} gives: pass classifier= "
                             "the layer that reads the pooled channels")
        return HeadLayout(name, features // (copies * cells), features, copies, cells, pool_text,
                          norm if _norm_size(model, norm) in (features, features // (copies * cells)) else "")

    # No pooling module: the model pools (or flattens) in its forward, or the classifier is a conv.
    if conv_classifier:
        return HeadLayout(name, features, features, 1, 1, "the conv classifier's own pixels")
    linear_hidden = [u for u in hidden if not structure.conv_rank(u[1])]
    if linear_hidden:
        if not strict:
            return None
        first = linear_hidden[0]  # the one next to the classifier
        raise ValueError(
            f"cannot tell how the classifier {cls_text} of {model_name} reads the map's channels: no pooling module "
            f"comes before it, and {_describe(*first)} between them may be a hidden layer (an MLP head) or act on "
            "each pixel. Make the pooling a module (nn.AdaptiveAvgPool2d(1) before the head) so that convert sees "
            "it, or pass classifier= a linear layer that reads the pooled channels" + SELF_ADVICE)
    channels = None
    for unit_name, unit in [u for u in reversed(units) if u[0] not in ancestors]:
        channels = _channels_of(unit)
        if channels is not None:
            break
    if channels is not None and channels == features:
        return HeadLayout(name, channels, features, 1, 1, "pooled in forward",
                          norm if _norm_size(model, norm) == features else "")
    if channels is not None and flatten and features % channels == 0:
        return HeadLayout(name, channels, features, 1, features // channels, "a flattened map")
    if not strict:
        return None
    seen = f"the map before it has {channels} channels" if channels else "no conv or norm before it shows the channels"
    raise ValueError(
        f"cannot tell how the classifier {cls_text} of {model_name} reads the map's channels: it takes {features} "
        f"features, {seen}, and no pooling module says how they relate (the model pools or concatenates in "
        "forward). Make the pooling a module (nn.AdaptiveAvgPool2d(1)) so that convert sees it, or pass "
        "classifier= explicitly to guide by its weights as given (groups of consecutive features per channel)"
        + SELF_ADVICE)


def is_layer_norm(module: nn.Module) -> bool:
    """A LayerNorm over the channels with a per-channel gain (nn.LayerNorm, timm's LayerNorm2d)."""
    weight = getattr(module, "weight", None)
    return ("LayerNorm" in type(module).__name__ and isinstance(weight, torch.Tensor) and weight.dim() == 1)


def _norm_size(model: nn.Module, name: str) -> int:
    return model.get_submodule(name).weight.numel() if name else -1


def _in_features(module: nn.Module) -> int:
    return module.in_features if isinstance(module, nn.Linear) else getattr(module, "in_channels", 0)


def layout_for(model: nn.Module, classifier: nn.Module, *, strict: bool = True) -> Optional[HeadLayout]:
    """:func:`head_layout`, or for a vision transformer (``structure.vit_plan``) the layout of its
    head: one feature per channel, read from the class token or the pooled patch tokens, with the
    final LayerNorm's gain folded in. With a class token the CAM is not the class score's
    decomposition (the head reads one token, which attends to the patches): it is each patch
    token's alignment with the class's weights in the residual stream, an approximation. With
    average pooling and the final norm folded it is exact up to a per-sample scale and shift."""
    model = unwrap(model)
    plan = structure.vit_plan(model)
    if plan is not None and plan.classifier is not None and model.get_submodule(plan.classifier) is classifier:
        C = int(classifier.weight.shape[1])
        return HeadLayout(plan.classifier, C, C, pool=plan.pool, norm=plan.norm or "")
    layout = head_layout(model, classifier, strict=strict)
    grid = structure.nhwc_plan(model)
    if layout is not None and grid is not None and grid.norm and not layout.norm \
            and model.get_submodule(grid.norm).normalized_shape[0] == layout.channels:
        # (Swin: the final LayerNorm runs on every position before the head pools: its gain is each
        # channel's, folded as for a ViT's)
        layout = layout._replace(norm=grid.norm)
    return layout
