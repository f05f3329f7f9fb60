"""Training-loop helpers: hand targets to the CamDrop layers, set and schedule their rate, and
report what they dropped.

The schedules follow the authors' code (``ResNet/resnet_model.py``): "decay" ramps the drop
rate linearly from 0 to its final value over training; "V" ramps it up to its peak at an
anchor step (by default half-way), then back down to 0 at the end; and each stage s of a
ResNet gets the rate divided by 4**(last_stage - s).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List

import torch
from torch import nn

from . import validation
from .guidance import check_targets
from .nn import CamDropNd


def camdrop_layers(model: nn.Module) -> List[CamDropNd]:
    """Every CamDrop layer in ``model`` (DDP and torch.compile wrappers included)."""
    return [m for m in model.modules() if isinstance(m, CamDropNd)]


@contextlib.contextmanager
def targets(model: nn.Module, targets: torch.Tensor) -> Iterator[nn.Module]:
    """Hand the batch's targets to every CamDrop layer of ``model`` for the forward passes inside.

    ``targets`` are class indices (N,) of any integer dtype, or soft targets (N, K)
    (mixup/cutmix). They are checked against each bound classifier here, once. On exit,
    also on error, each layer gets back the targets it had before (so contexts nest)::

        with camdrop_kernels.targets(model, labels):
            loss = criterion(model(images), labels)
        loss.backward()

    Only the forward needs to be inside: a forward that activation checkpointing recomputes
    during backward finds the targets of its original forward (the layers remember them).
    """
    layers = camdrop_layers(model)
    if not layers:
        raise ValueError("the model has no CamDrop layers: add them first (camdrop_kernels.convert)")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a tensor: class indices (N,) or soft targets (N, K); got "
                        f"{type(targets).__name__}")
    if targets.dim() not in (1, 2):
        raise ValueError(f"targets must be class indices (N,) or soft targets (N, K); got shape "
                         f"{tuple(targets.shape)}")
    checked = set()
    for layer in layers:
        classifier = layer.classifier
        if classifier is not None and id(classifier) not in checked:
            check_targets(classifier.weight, targets)
            checked.add(id(classifier))
    # A compiled model whose batch is marked dynamic sees the labels' batch as dynamic too (a hint:
    # dynamo may still specialise it), instead of failing on "specialised to a constant".
    torch._dynamo.maybe_mark_dynamic(targets, 0)
    saved = [(layer._targets, layer._memo) for layer in layers]
    memo: dict = {}  # this block's channel importances, shared by the layers (see CamDropNd._importance)
    for layer in layers:
        layer.set_targets(targets)
        layer.__dict__["_memo"] = memo
        layer._size_statistics(targets.shape[0])  # so that a compiled forward writes them in place
    try:
        yield model
    finally:
        for layer, (previous, previous_memo) in zip(layers, saved):
            layer.set_targets(previous)
            layer.__dict__["_memo"] = previous_memo


def set_drop_prob(model: nn.Module, drop_prob: float) -> None:
    """Set every CamDrop layer's rate to ``drop_prob`` times its per-stage ``drop_prob_scale``.

    The rate is a tensor the layers read on the device: calling this every step does not
    recompile a compiled model."""
    drop_prob = validation.check_probability("drop_prob", drop_prob)
    for layer in camdrop_layers(model):
        layer.drop_prob = drop_prob * layer.drop_prob_scale


def dropped_stats(model: nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per CamDrop layer (by module name): the last training batch's dropped share (``fraction``)
    and whether its rate saturated (``saturated``), as device tensors: no sync."""
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, CamDropNd) and module.last_dropped is not None:
            out[name] = {"fraction": module.last_dropped_fraction, "saturated": module.saturated}
    return out


def dropped_summary(model: nn.Module) -> str:
    """One line for a training log: each CamDrop layer's last dropped share, '!' where its rate
    saturated (drop_prob asked for more than the guided region holds). Reads device values: call
    it every k steps, not in the hot loop."""
    stats = dropped_stats(model)
    if not stats:
        return "camdrop: no training batch yet"
    values = torch.stack([torch.stack([s["fraction"].float(), s["saturated"].float()]) for s in stats.values()])
    values = values.cpu().tolist()
    parts = [f"{name or 'layer'} {100 * f:.2f}%{'!' if sat else ''}" for name, (f, sat) in zip(stats, values)]
    note = " (! = saturated: drop_prob asks for more than the guided region holds)" if any(v[1] for v in values) else ""
    return "camdrop dropped: " + ", ".join(parts) + note


def stage_drop_prob(drop_prob: float, stage: int, last_stage: int = 4) -> float:
    """The authors' per-stage rate: keep 1 - (1 - keep) / 4**(last_stage - stage), i.e. p / 4**(L - s)."""
    drop_prob = validation.check_probability("drop_prob", drop_prob)
    if not validation.is_int(stage) or not 1 <= stage <= last_stage:
        raise ValueError(f"stage must be an int in [1, {last_stage}]; got {stage!r}")
    return drop_prob / 4.0 ** (last_stage - stage)


def _check_steps(step, total_steps):
    if not validation.is_int(total_steps) or total_steps < 1:
        raise ValueError(f"total_steps must be an int >= 1; got {total_steps!r}")
    if not validation.is_int(step) or step < 0:
        raise ValueError(f"step must be an int >= 0; got {step!r}")


def linear_ramp(step: int, total_steps: int, drop_prob: float) -> float:
    """The "decay" schedule: drop_prob * step / total_steps, held at drop_prob after the end."""
    _check_steps(step, total_steps)
    drop_prob = validation.check_probability("drop_prob", drop_prob)
    return drop_prob * min(step, total_steps) / total_steps


def v_schedule(step: int, total_steps: int, drop_prob: float, peak_step: int = None) -> float:
    """The "V" schedule: up from 0 to drop_prob at ``peak_step`` (default total_steps // 2), then down
    to 0 at ``total_steps`` (the authors anchor the peak between two learning-rate drops)."""
    _check_steps(step, total_steps)
    drop_prob = validation.check_probability("drop_prob", drop_prob)
    peak = total_steps // 2 if peak_step is None else peak_step
    if not validation.is_int(peak) or not 0 < peak < total_steps:
        raise ValueError(f"peak_step must be an int in (0, total_steps); got {peak_step!r}")
    if step < peak:
        return drop_prob * step / peak
    return drop_prob * max(total_steps - step, 0) / (total_steps - peak)
