"""Where ``convert`` attached its layers, and putting them back when the model was rebuilt around them.

``convert`` attaches a CamDrop layer after a module (a BatchNorm, a block) with a forward hook
and registers it as that module's ``camdrop`` child. Utilities users run after creating a model
replace modules wholesale: ``nn.SyncBatchNorm.convert_sync_batchnorm`` (which keeps children but
not hooks), timm's ``freeze_batch_norm_2d`` and ``torch.ao`` conv-BN fusion (which keep neither).
So the root model keeps a list of (module name, layer): :func:`restore` (run by every ``targets``
block) re-attaches each layer to the module now at that name, and :func:`lost_message` explains
a model whose layers are gone.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch.fx
from torch import Tensor, nn

_PLACES = "_camdrop_places"  # root.__dict__ entry: [(module name, layer)], copied by deepcopy and pickle


def unwrap(model: nn.Module) -> nn.Module:
    """The model under torch.compile / DDP / DataParallel wrappers (their modules are shared)."""
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


class CamDropAfter:
    """Forward hook applying ``module.camdrop`` to a module's output (an object holding the module,
    so that deepcopy rebinds it to the copy). An output that is not the map the layer was placed
    for (a tuple, a transformer block's tokens where a conv map was expected) is an error naming
    the place, in training; eval passes it on."""

    def __init__(self, module: nn.Module, name: Optional[str] = None) -> None:
        self.module = module
        self.name = name

    def __call__(self, module, inputs, output):
        layer = self.module.camdrop
        dims = getattr(layer, "input_dims", None)
        if dims is not None and not (isinstance(output, Tensor) and output.dim() == dims) \
                and not isinstance(output, torch.fx.Proxy) and getattr(layer, "camdrop", layer).training:
            raise ValueError(self._mismatch(module, layer, output))
        return layer(output)

    def _mismatch(self, module: nn.Module, layer: nn.Module, output) -> str:
        where = getattr(self, "name", None) or type(module).__name__  # (hooks pickled before names: none)
        layout = getattr(layer, "input_layout", "map")
        if isinstance(output, Tensor):
            return (f"the CamDrop layer after {where!r} expects an {layout} input but that module returned a "
                    f"{tuple(output.shape)} tensor. If it is a map of another rank, pass convert rank="
                    f"{max(1, min(3, output.dim() - 2))}; if it is not a feature map (a transformer block's tokens), "
                    "convert with where= naming modules whose outputs are feature maps")
        return (f"the CamDrop layer after {where!r} expects an {layout} input but that module returned a "
                f"{type(output).__name__}, not a feature map: convert with where= naming modules whose outputs are "
                "feature maps")


def _hooked(target: nn.Module, layer: nn.Module) -> bool:
    if target._modules.get("camdrop") is not layer:
        return False
    return any(isinstance(h, CamDropAfter) and h.module is target for h in target._forward_hooks.values())


def attach(root: nn.Module, name: str, target: nn.Module, layer: nn.Module) -> None:
    """Run ``layer`` on ``target``'s output (``target`` is the module at ``name`` in ``root``), and
    remember the place so that :func:`restore` can put it back."""
    for key, hook in list(target._forward_hooks.items()):  # (a stale hook of a replaced layer)
        if isinstance(hook, CamDropAfter):
            del target._forward_hooks[key]
    target.camdrop = layer
    target.register_forward_hook(CamDropAfter(target, name))
    places: List[Tuple[str, nn.Module]] = root.__dict__.setdefault(_PLACES, [])
    for i, (known, _) in enumerate(places):
        if known == name:
            places[i] = (name, layer)
            break
    else:
        places.append((name, layer))


def restore(root: nn.Module) -> int:
    """Re-attach every layer whose module was replaced since ``convert``; returns how many were."""
    places = root.__dict__.get(_PLACES)
    if not places:
        return 0
    restored = 0
    for name, layer in list(places):
        try:
            target = root.get_submodule(name)
        except AttributeError:
            continue  # (the structure above it changed: see lost)
        if not _hooked(target, layer):
            attach(root, name, target, layer)
            restored += 1
    return restored


def detach_all(root: nn.Module) -> int:
    """Remove every CamDropAfter hook and the ``camdrop`` child it runs, and the place list; returns
    how many were removed."""
    removed = 0
    for module in root.modules():
        keys = [key for key, hook in module._forward_hooks.items() if isinstance(hook, CamDropAfter)]
        for key in keys:
            del module._forward_hooks[key]
        if keys and "camdrop" in module._modules:
            del module._modules["camdrop"]
            removed += 1
    root.__dict__.pop(_PLACES, None)
    return removed


def lost(root: nn.Module) -> list:
    """The names of places whose module no longer exists in the model (its layer cannot run)."""
    names = []
    for name, _ in root.__dict__.get(_PLACES, ()):
        try:
            root.get_submodule(name)
        except AttributeError:
            names.append(name)
    return names


def lost_message(root: nn.Module) -> str:
    places = root.__dict__.get(_PLACES)
    if not places:
        return ""
    return (f" (convert placed {len(places)} layers in this model, at {places[0][0]!r} and others, but none is "
            "reachable now: was the model restructured after convert? Convert it again)")
