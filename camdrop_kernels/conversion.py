"""``convert_resnet``: put CamDrop layers into a timm or torchvision ResNet, bound to its classifier.

Placement: one CamDrop per residual block of each chosen stage, in timm's ``drop_block`` slot
(after the BN of the 3x3 conv: ``bn2`` in a Bottleneck, ``bn1`` in a BasicBlock). timm models
get it in that very slot, as ``drop_block_rate`` would; torchvision models get a forward hook on
that BN with the layer registered as the block's ``camdrop`` attribute, which adds no parameters
or buffers, so state_dict keys and pretrained weights are untouched. (The authors' TensorFlow
code applies it four times per bottleneck, DropBlock-paper style; one per block costs a quarter
of that and keeps the two libraries' conversions alike.)
"""
from __future__ import annotations

from typing import Optional, Sequence

from torch import nn

from . import validation
from .nn import CamDrop2d
from .training import stage_drop_prob

# timm's drop_block_rate uses 5 in stage 3 and 3 in stage 4; DropBlock's default 7 before that.
DEFAULT_BLOCK_SIZE = {1: 7, 2: 7, 3: 5, 4: 3}
SUPPORTED = ("timm ResNet-family models (timm.models.resnet.ResNet: resnet*, resnext*, seresnet*, wide_resnet*, "
             "...) and torchvision ResNets (torchvision.models.ResNet: resnet18-152, resnext*, wide_resnet*)")


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


class _CamDropAfter:
    """Forward hook applying ``block.camdrop`` to a BN's output (an object, so deepcopy rebinds it)."""

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def __call__(self, module, inputs, output):
        return self.block.camdrop(output)


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

    ``block_size`` None takes 7, 7, 5, 3 for stages 1-4 (timm's choice for 3 and 4). With
    ``stage_scaling`` stage s gets ``drop_prob / 4**(4 - s)`` (the authors' rule); later
    ``set_drop_prob(model, p)`` keeps that ratio. Every layer is bound to the classifier
    (``model.fc`` / ``model.get_classifier()``); other keywords go to :class:`CamDrop2d`.
    """
    library = _library(model)
    if library is None:
        raise ValueError(f"convert_resnet supports {SUPPORTED}; got {type(model).__name__}")
    drop_prob = validation.check_probability("drop_prob", drop_prob)
    if block_size is not None:
        validation.check_block_size(block_size)
    stages = tuple(stages)
    if not stages or any(not validation.is_int(s) or not 1 <= s <= 4 for s in stages) or len(set(stages)) != len(stages):
        raise ValueError(f"stages must be distinct ints in 1..4; got {stages!r}")
    classifier = model.get_classifier() if library == "timm" else model.fc
    if not isinstance(classifier, nn.Linear):
        raise ValueError(f"the model's classifier must be an nn.Linear to guide CamDrop; got "
                         f"{type(classifier).__name__} (was it reset with num_classes=0?)")
    for stage in stages:
        scale = stage_drop_prob(1.0, stage) if stage_scaling else 1.0
        size = block_size if block_size is not None else DEFAULT_BLOCK_SIZE[stage]
        for block in getattr(model, f"layer{stage}"):
            layer = CamDrop2d(drop_prob * scale, size, classifier=classifier, drop_prob_scale=scale,
                              **camdrop_kwargs)
            if library == "timm":
                block.drop_block = layer
            else:
                if hasattr(block, "camdrop"):
                    raise ValueError("this model already has CamDrop layers (convert it once)")
                block.camdrop = layer
                bn = block.bn2 if hasattr(block, "conv3") else block.bn1  # Bottleneck: bn2; BasicBlock: bn1
                bn.register_forward_hook(_CamDropAfter(block))
    return model
