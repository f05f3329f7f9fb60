"""Where CamDrop looks: channel importance from the classifier, the class activation map, and
guidance without labels (SPEC.md, "Helpers the contract leans on")."""
from __future__ import annotations

import math
from typing import Tuple

import torch
import torch.nn.functional as F

from .validation import check_floating_tensor, is_int

_INT_DTYPES = tuple(getattr(torch, name) for name in ("uint8", "int8", "int16", "int32", "int64", "uint16", "uint32",
                                                      "uint64") if hasattr(torch, name))


def channel_importance(weight: torch.Tensor, targets: torch.Tensor, channels: int) -> torch.Tensor:
    """alpha (N, channels): each channel's weight for the sample's class in the final linear layer.

    ``weight`` is the classifier's (K, C') matrix; ``targets`` are class indices (N,) of any
    integer dtype, or soft targets (N, K) (mixup/cutmix: the rows are mixed by them). A
    single-logit head (K = 1, binary cross-entropy) takes labels (N,) in {0, 1} or probabilities
    (N,) or (N, 1) in [0, 1]: a positive's evidence is the weight, a negative's the weight
    negated, i.e. ``(2 t - 1) * weight``. When C' is a multiple of ``channels`` each output is the
    mean of C'/channels consecutive entries (the authors' grouping); otherwise the channel axis is
    adaptively average-pooled.
    """
    if not is_int(channels) or channels < 1:
        raise ValueError(f"channels must be an int >= 1; got {channels!r}")
    check_targets(weight, targets)
    return importance(weight, targets, channels)


def check_targets(weight: torch.Tensor, targets: torch.Tensor) -> None:
    """Validate a classifier weight and targets for it. Values on the CPU are range-checked here
    (on CUDA an out-of-range index fails in the gather itself: checking would sync)."""
    check_floating_tensor("weight", weight)
    if weight.dim() != 2:
        raise ValueError(f"weight must be the classifier's 2-D (num_classes, features) matrix; got shape "
                         f"{tuple(weight.shape)}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor; got {type(targets).__name__}")
    K = weight.shape[0]
    if K == 1:
        _check_binary_targets(targets)
        return
    if targets.dim() == 1 and targets.dtype in _INT_DTYPES:
        if targets.device.type == "cpu" and targets.numel():
            # (int64 first: torch has no min/max for uint16/32/64; a uint64 above 2**63 wraps negative, and is refused)
            wide = targets.to(torch.int64)
            lo, hi = int(wide.min()), int(wide.max())
            if lo < 0 or hi >= K:
                raise ValueError(f"targets must be class indices in [0, {K}); got values in [{lo}, {hi}]")
        return
    if targets.dim() == 2 and targets.is_floating_point():
        if targets.shape[1] != K:
            raise ValueError(f"soft targets must have shape (N, {K}) to match weight's {K} classes; got "
                             f"{tuple(targets.shape)}")
        return
    raise TypeError(f"targets must be integer class indices (N,) or float soft targets (N, {K}); got dtype "
                    f"{targets.dtype} and shape {tuple(targets.shape)}")


def _check_binary_targets(targets: torch.Tensor) -> None:
    """A single-logit head's targets: labels (N,) in {0, 1}, or probabilities (N,) / (N, 1) in [0, 1]."""
    ok_shape = targets.dim() == 1 or (targets.dim() == 2 and targets.shape[1] == 1)
    if not ok_shape or not (targets.dtype in _INT_DTYPES or targets.dtype == torch.bool or targets.is_floating_point()):
        raise TypeError(f"the classifier has one output (a binary head): targets must be labels (N,) in {{0, 1}} or "
                        f"probabilities (N,) or (N, 1) in [0, 1]; got dtype {targets.dtype} and shape "
                        f"{tuple(targets.shape)}")
    if targets.device.type == "cpu" and targets.numel():
        wide = targets.to(torch.float64)
        lo, hi = float(wide.min()), float(wide.max())
        if not (0.0 <= lo and hi <= 1.0):  # (also refuses NaN)
            raise ValueError(f"a binary head's targets must lie in [0, 1] (labels 0/1 or probabilities); got values "
                             f"in [{lo}, {hi}]")


def importance(weight: torch.Tensor, targets: torch.Tensor, channels: int, layout=None, norm=None) -> torch.Tensor:
    """channel_importance without the checks (for callers that validated once, e.g. the layers).
    ``layout`` (``heads.HeadLayout``) says how the classifier's features come from the pooled
    channels when they are not those channels in order (timm's "catavgmax": [avg, max]; a
    flattened grid), and ``norm`` is the LayerNorm whose gain it folds in."""
    if weight.shape[0] == 1 and (targets.dim() == 1 or (targets.dim() == 2 and targets.shape[1] == 1)):
        # Binary head: (2 t - 1) * w, the negated weight for negatives.
        t = targets.reshape(-1).to(device=weight.device, dtype=weight.dtype)
        rows = (2.0 * t - 1.0)[:, None] * weight[0]
    elif targets.dim() == 1:
        rows = weight.index_select(0, targets.to(device=weight.device, dtype=torch.int64))
    else:
        rows = targets.to(device=weight.device, dtype=weight.dtype) @ weight
    if layout is not None:
        rows = layout.fold(rows, None if norm is None else norm.weight)
    features = rows.shape[1]
    if features == channels:  # (a mean over groups of one is the identity: skip its launch)
        return rows
    if features % channels == 0:
        return rows.reshape(rows.shape[0], channels, features // channels).mean(-1)
    return F.adaptive_avg_pool1d(rows[:, None, :], channels)[:, 0, :]


def check_classifier_weight(weight: torch.Tensor, x: torch.Tensor, owner: str) -> torch.Tensor:
    """The bound classifier's weight as a plain 2-D tensor on x's device, for the guidance.

    A DTensor (FSDP2 with the classifier sharded as its own unit, tensor parallelism) is gathered
    (``full_tensor``: a collective every rank reaches at the same layer); FSDP1's flattened shard
    outside the classifier's own forward cannot be read, and is refused with advice."""
    if type(weight).__name__ == "DTensor":
        weight = weight.full_tensor()
    if weight.dim() > 2 and all(size == 1 for size in weight.shape[2:]):  # a 1x1-conv classifier
        weight = weight.flatten(1)
    if weight.dim() != 2:
        raise RuntimeError(
            f"{owner}: the bound classifier's weight has shape {tuple(weight.shape)} here, not (classes, features): "
            "under FSDP1 the classifier's parameters are sharded outside its own forward. Keep the classifier in "
            "the root FSDP unit (wrap only the blocks), or use FSDP2 (fully_shard), whose sharded weight is "
            "gathered for the guidance")
    if weight.device != x.device:
        raise ValueError(f"the bound classifier's weight is on {weight.device} but x is on {x.device}: move the "
                         "whole model to one device")
    return weight


def class_activation_map(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """cam (N, *S) = sum over c of alpha[n, c] * x[n, c]: the CAM at x's resolution, for x of any
    rank (N, C, *S)."""
    check_floating_tensor("x", x)
    check_floating_tensor("alpha", alpha)
    if x.dim() < 3:
        raise ValueError(f"x must be (N, C, *S) with at least one spatial axis; got shape {tuple(x.shape)}")
    if alpha.dim() != 2 or alpha.shape[0] != x.shape[0] or alpha.shape[1] != x.shape[1]:
        raise ValueError(f"alpha must have shape (N, C) = ({x.shape[0]}, {x.shape[1]}) to match x's channels; "
                         f"got {tuple(alpha.shape)}")
    return cam_unchecked(x, alpha)


def cam_unchecked(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """class_activation_map without the checks: one batched matrix-vector product over x as laid
    out (channels innermost for channels_last, else outermost), so x is read once, not copied
    (and the host pays one bmm, not einsum's planning: measured 47 -> 8 us a call on a CPU)."""
    a = alpha if alpha.dtype == x.dtype else alpha.to(x.dtype)
    N, C, spatial = x.shape[0], x.shape[1], x.shape[2:]
    P = math.prod(spatial)  # (explicit sizes: -1 cannot be inferred when N or C is 0)
    if C > 1 and x.stride(1) == 1:  # channels_last(_3d): (N, P, C) @ (N, C, 1)
        return torch.bmm(x.movedim(1, -1).reshape(N, P, C), a.unsqueeze(2)).view(N, *spatial)
    return torch.bmm(a.unsqueeze(1), x.reshape(N, C, P)).view(N, *spatial)


def self_guidance(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(cam, alpha) without labels (SPEC.md v2.1, after ADL): cam[n] the mean of x[n] over channels,
    alpha[n, c] the mean of x[n, c] over the map; detached, accumulated in float32 (float64 for
    float64 x)."""
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    with torch.no_grad():
        x = x.detach()
        cam = x.mean(1, dtype=acc)
        alpha = x.mean(tuple(range(2, x.dim())), dtype=acc)
    return cam, alpha
