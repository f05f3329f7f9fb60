"""Training-loop helpers: hand targets to the CamDrop layers, set and schedule their rate, and
report what they dropped (and which layers did not run).

The schedules follow the authors' code (``ResNet/resnet_model.py``): "decay" ramps the drop
rate linearly from 0 to its final value over training; "V" ramps it up to its peak at an
anchor step (by default half-way), then back down to 0 at the end; and each stage s of a
ResNet gets the rate divided by 4**(last_stage - s).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Dict, Iterator, List, Optional

import torch
from torch import nn

from . import placement, validation
from .guidance import check_targets
from .guide import Scope
from .nn import CamDropNd


def camdrop_layers(model: nn.Module) -> List[CamDropNd]:
    """Every CamDrop layer in ``model`` (DDP and torch.compile wrappers included)."""
    validation.check_module("model", model)
    return [m for m in model.modules() if isinstance(m, CamDropNd)]


@contextlib.contextmanager
def targets(model: nn.Module, targets: torch.Tensor) -> Iterator[nn.Module]:
    """Hand the batch's targets to every CamDrop layer of ``model`` for the forward passes inside.

    ``targets`` are class indices (N,) of any integer dtype, or soft targets (N, K)
    (mixup/cutmix); for a single-logit head, labels or probabilities (N,) in [0, 1]; a model whose
    layers are all self-guided reads none and takes any (N, ...) tensor (segmentation masks: the
    block then only sizes the statistics, which compiled checkpointed forwards need). They are
    checked against each bound classifier here, once. Layers that ``convert`` placed are checked
    to still be in place (module-swapping utilities such as ``SyncBatchNorm.convert_sync_batchnorm``
    replace the modules they were hooked on: they are re-attached), and follow the model's current
    classifier (a replaced head guides them). The targets belong to this thread: another thread's
    forward through these layers is refused. On exit, also on error, each layer gets back the
    targets it had before (so contexts nest); a training-mode model whose CamDrop layers did not
    run inside the block gets a warning, and ``dropped_summary`` says "did not run" for them::

        with camdrop_kernels.targets(model, labels):
            loss = criterion(model(images), labels)
        loss.backward()

    Only the forward needs to be inside: a forward that activation checkpointing recomputes
    during backward finds the targets of its original forward (the layers remember them).
    """
    validation.check_module("model", model)
    root = placement.unwrap(model)
    placement.restore(root)
    layers = [m for m in model.modules() if isinstance(m, CamDropNd)]
    if not layers:
        raise ValueError("the model has no CamDrop layers: add them first (camdrop_kernels.convert)"
                         + placement.lost_message(root))
    gone = placement.lost(root)
    if gone:
        warnings.warn(f"camdrop_kernels: {len(gone)} CamDrop layers that convert placed cannot run: the modules "
                      f"they drop after ({', '.join(map(repr, gone[:4]))}{', ...' if len(gone) > 4 else ''}) are no "
                      "longer in the model (restructured after convert?); convert the model again", RuntimeWarning,
                      stacklevel=3)
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a tensor: class indices (N,) or soft targets (N, K); got "
                        f"{type(targets).__name__}")
    guided = any(layer.guide.mode == "classifier" for layer in layers)
    if not guided and targets.dim() >= 1:
        pass  # (self guidance reads no labels: the block only sizes the statistics for the batch, N)
    elif targets.dim() not in (1, 2):
        dense = (" Per-pixel targets (segmentation masks) cannot guide the classifier-bound layers: convert the "
                 "model with guidance='self' (the map's own channel means), which needs no labels"
                 if targets.dim() >= 3 else "")
        raise ValueError(f"targets must be class indices (N,) or soft targets (N, K); got shape "
                         f"{tuple(targets.shape)}.{dense}")
    checked = set()
    for layer in layers:
        guide = layer.guide
        guide.follow(root)
        classifier = guide.classifier
        if guide.mode == "classifier" and classifier is not None and id(classifier) not in checked:
            weight = classifier.weight
            if weight.dim() > 2 and all(size == 1 for size in weight.shape[2:]):  # a 1x1-conv classifier
                weight = weight.flatten(1)
            if weight.dim() == 2:  # (a sharded weight is checked where it is gathered, in the forward)
                check_targets(weight, targets)
            checked.add(id(classifier))
    # A compiled model whose batch is marked dynamic sees the labels' batch as dynamic too (a hint:
    # dynamo may still specialise it), instead of failing on "specialised to a constant".
    torch._dynamo.maybe_mark_dynamic(targets, 0)
    scope = Scope(targets)
    scope.sized = True  # (below: every layer's statistics are sized for this batch)
    saved = []
    try:
        for layer in layers:
            saved.append(layer.guide.enter(scope))
    except BaseException:
        for layer, previous in zip(layers, saved):
            layer.guide.leave(previous)
        raise
    marks = []
    for layer in layers:
        layer.guide.size_statistics(targets.shape[0], layer._numel.device)  # (a compiled forward writes in place)
        marks.append(layer.guide.mark())
    ok = False
    try:
        yield model
        ok = True
    finally:
        for layer, previous in zip(layers, saved):
            layer.guide.leave(previous)
        if ok:
            _report_idle(model, layers, marks)


def _report_idle(model: nn.Module, layers: List[CamDropNd], marks: list) -> None:
    """Mark which layers ran in this block; warn when training-mode layers did not."""
    idle = []
    for layer, mark in zip(layers, marks):
        ran = layer.guide.ran_since(mark)
        layer.guide.idle = not ran and layer.training
        if layer.guide.idle:
            idle.append(layer)
    if idle:
        names = {m: n for n, m in model.named_modules()}
        shown = ", ".join(repr(names.get(l, "?")) for l in idle[:6]) + (", ..." if len(idle) > 6 else "")
        warnings.warn(
            f"camdrop_kernels: {len(idle)} of {len(layers)} CamDrop layers did not run inside this targets block "
            f"({shown}): was the forward outside the block, or were the modules they were attached to replaced "
            "after convert?", RuntimeWarning, stacklevel=3)


def set_drop_prob(model: nn.Module, drop_prob: float) -> None:
    """Set every CamDrop layer's rate to ``drop_prob`` times its per-stage ``drop_prob_scale``.

    The rate is a tensor the layers read on the device: calling this every step does not
    recompile a compiled model."""
    validation.check_module("model", model)
    drop_prob = validation.check_probability("drop_prob", drop_prob)
    for layer in camdrop_layers(model):
        layer.drop_prob = drop_prob * layer.drop_prob_scale


def dropped_stats(model: nn.Module) -> Dict[str, Dict[str, Optional[torch.Tensor]]]:
    """Per CamDrop layer (by module name): the last training batch's dropped share (``fraction``),
    whether its rate saturated (``saturated``), as device tensors (no sync), and whether it ran in
    the last ``targets`` block (``ran``: False for a layer that did not; its fraction is then None,
    never 0)."""
    validation.check_module("model", model)
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, CamDropNd) and (module.last_dropped is not None or module.guide.idle):
            ran = not module.guide.idle
            out[name] = {"fraction": module.last_dropped_fraction if ran else None,
                         "saturated": module.saturated if ran else None, "ran": ran}
    return out


def dropped_summary(model: nn.Module) -> str:
    """One line for a training log: each CamDrop layer's last dropped share, '!' where its rate
    saturated (drop_prob asked for more than the guided region holds), "did not run" where the
    layer did not run in the last targets block. Reads device values: call it every k steps, not
    in the hot loop."""
    stats = dropped_stats(model)
    if not stats:
        return "camdrop: no training batch yet"
    ran = [s for s in stats.values() if s["ran"]]
    values = iter(torch.stack([torch.stack([s["fraction"].float(), s["saturated"].float()]) for s in ran])
                  .cpu().tolist() if ran else [])
    parts, saturated = [], False
    for name, s in stats.items():
        if not s["ran"]:
            parts.append(f"{name or 'layer'} did not run")
            continue
        f, sat = next(values)
        saturated |= bool(sat)
        parts.append(f"{name or 'layer'} {100 * f:.2f}%{'!' if sat else ''}")
    note = " (! = saturated: drop_prob asks for more than the guided region holds)" if saturated else ""
    return "camdrop dropped: " + ", ".join(parts) + note


@torch.no_grad()
def label_readback(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                   drop_prob: Optional[float] = None) -> Dict[str, float]:
    """Does the model read the label off CamDrop's mask? A classifier-guided layer drops where the
    true class's evidence is, in that class's top channels, so the layers after it may learn to
    recognise the mask, and through it the label: then the model scores well in training and near
    chance in evaluation (measured on a small ViT: examples/results/evidence.md). On a batch, with
    the model in eval mode but its CamDrop layers dropping (at their current rates, or
    ``drop_prob``), this returns the accuracy with no dropping (``eval``), guided by the true labels
    (``true_guided``), guided by wrong ones, (label + 1) mod K (``wrong_guided``), and the share of
    predictions that follow the wrong labels (``follows_wrong``; ``eval_follows_wrong`` is its chance
    level). A model that does not read the mask gives true_guided and wrong_guided near eval, and
    follows_wrong near eval_follows_wrong. The model's modes and rates are restored afterwards."""
    validation.check_module("model", model)
    if drop_prob is not None:
        drop_prob = validation.check_probability("drop_prob", drop_prob)
    root = placement.unwrap(model)
    for layer in camdrop_layers(model):
        layer.guide.follow(root)  # (a replaced head: K and the guidance are the current head's, as in targets)
    layers = [m for m in camdrop_layers(model) if m.guidance == "classifier" and m.classifier is not None]
    if not layers:
        raise ValueError("the model has no classifier-guided CamDrop layers: its masks do not depend on the labels")
    if drop_prob is None and all(layer.drop_prob == 0 for layer in layers):
        raise ValueError("label_readback: the CamDrop layers' rate is 0 (a schedule's first step?), so nothing would be "
                         "dropped and the check would measure nothing: pass drop_prob (e.g. the final rate)")
    K = int(layers[0].classifier.weight.shape[0])
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.is_floating_point():
        raise TypeError("labels must be class indices (N,)")
    wrong = 1 - labels if K == 1 else (labels + 1) % K
    modes = {m: m.training for m in model.modules()}
    rates = {layer: layer.drop_prob for layer in camdrop_layers(model)}
    try:
        model.eval()
        for layer in camdrop_layers(model):
            layer.train()
            if drop_prob is not None:
                layer.drop_prob = drop_prob * layer.drop_prob_scale

        def predict(guide=None):
            if guide is None:
                with _all_eval(model):
                    out = model(images)
            else:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message="camdrop_kernels: .* did not run inside this targets")
                    with targets(model, guide):
                        out = model(images)
                idle = [layer for layer in layers if layer.guide.idle]
                if idle:  # (a measurement of nothing must not read as "no leak")
                    names = {m: n for n, m in model.named_modules()}
                    raise RuntimeError(
                        f"label_readback: {len(idle)} of {len(layers)} classifier-guided CamDrop layers did not run in "
                        f"the model's forward ({', '.join(repr(names.get(l, '?')) for l in idle[:4])}): the check "
                        "would measure nothing. Are they on a path the forward takes in eval mode?")
            return (out[:, 0] > 0).long() if K == 1 else out.argmax(1)

        plain, true_guided, wrong_guided = predict(), predict(labels), predict(wrong)
    finally:
        for m, training in modes.items():
            m.train(training)
        for layer, p in rates.items():
            layer.drop_prob = p

    def share(a, b):
        return float((a == b).float().mean())

    return {"eval": share(plain, labels), "true_guided": share(true_guided, labels),
            "wrong_guided": share(wrong_guided, labels), "follows_wrong": share(wrong_guided, wrong),
            "eval_follows_wrong": share(plain, wrong)}


@contextlib.contextmanager
def _all_eval(model: nn.Module) -> Iterator[None]:
    layers = [(m, m.training) for m in camdrop_layers(model)]
    for m, _ in layers:
        m.eval()
    try:
        yield
    finally:
        for m, training in layers:
            m.train(training)


def stage_drop_prob(drop_prob: float, stage: int, last_stage: int = 4) -> float:
    """The authors' per-stage rate: keep 1 - (1 - keep) / 4**(last_stage - stage), i.e. p / 4**(L - s)."""
    drop_prob = validation.check_probability("drop_prob", drop_prob)
    if not validation.is_int(last_stage) or last_stage < 1:
        raise ValueError(f"last_stage must be an int >= 1; got {last_stage!r}")
    if not validation.is_int(stage) or not 1 <= stage <= last_stage:
        raise ValueError(f"stage must be an int in [1, last_stage={last_stage}]; got {stage!r}")
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


def v_schedule(step: int, total_steps: int, drop_prob: float, peak_step: Optional[int] = None) -> float:
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
