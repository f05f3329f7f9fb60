"""``CamDrop1d``, ``CamDrop2d``, ``CamDrop3d``: the nn.Module forms, optionally guided by a classifier."""
from __future__ import annotations

import collections
import weakref
from typing import Optional, Union

import torch
import torch.fx
from torch import nn

from . import api, validation
from .guidance import cam_unchecked, importance
from .options import Options
from .philox import make_seed

MISSING_TARGETS = ("error", "skip")
# Activation checkpointing: a bound layer remembers the targets of its last _HISTORY forwards (weakly)
# and holds the last _RECENT distinct targets tensors (strongly), so that a forward recomputed during
# backward finds them; older ones stay findable while something else (the loss) holds them.
_HISTORY = 256
_RECENT = 4
_MISSING = object()


def _is_exporting() -> bool:
    """True while torch.export traces (not under plain torch.compile).

    Reads torch.export's own flag: up to torch 2.11 Dynamo folds ``torch.compiler.is_exporting()``
    to True under every torch.compile, which would refuse compiled training."""
    flag = getattr(torch.compiler, "_is_exporting_flag", None)
    if flag is not None:
        return bool(flag)
    is_exporting = getattr(torch.compiler, "is_exporting", None)
    return bool(is_exporting()) if is_exporting is not None else False


def _fx_call(layer: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """Run a CamDrop layer; under torch.fx.symbolic_trace this call is recorded as one graph node."""
    return layer(*args)


torch.fx.wrap("_fx_call")


def _is_functorch_wrapped(x: torch.Tensor) -> bool:
    """x is a torch.func (grad/vmap/jvp) wrapper: the layer runs inside a functorch transform."""
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check(x)) if check is not None else False


def _is_fx_tracing() -> bool:
    """Inside torch.fx.symbolic_trace (torch >= 2.4: is_fx_symbolic_tracing; before, the flag itself)."""
    fx = torch.fx._symbolic_trace
    check = getattr(fx, "is_fx_symbolic_tracing", None) or getattr(fx, "_get_is_fx_tracing", None)
    return bool(check()) if check is not None else False


def _autocast_state(device_type: str):
    """What autocast would make of the importance's matmul (soft targets) on this device type."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError, RuntimeError):  # (older torch: no per-device query)
        return torch.is_autocast_enabled()
    return None


class CamDropNd(nn.Module):
    """CamDrop as a layer on (N, C, *S) maps; the identity in eval mode or at drop_prob 0.

    Two ways to guide it:

    - explicitly: ``forward(x, cam, alpha)``;
    - bound to the model's final linear layer (``classifier=`` or :meth:`bind`): ``forward(x)``
      builds ``alpha = channel_importance(classifier.weight, targets, C)`` and
      ``cam = class_activation_map(x, alpha)`` itself, without gradient, from the batch's targets
      handed over by :func:`camdrop_kernels.targets`.

    The options are validated once, here. The rate lives in a float64 buffer that is not saved in
    the state_dict, so ``set_drop_prob`` changes it every step without recompiling a compiled
    model. The classifier is referenced, not registered (state_dict keys do not change).
    After each training forward, ``last_dropped`` (N,) and ``last_rate`` (N,) hold the dropped
    counts and seed rates as device tensors (no sync); see :attr:`last_dropped_fraction`.
    """

    # The ``targets`` block's shared dict (see _importance); a class default, so that layers
    # pickled before it existed load with none.
    _memo: Optional[dict] = None

    rank = 2

    def __init__(
        self,
        drop_prob: float = 0.1,
        block_size: int = 7,
        *,
        top_pixels: Optional[Union[int, float]] = None,
        top_channels: Optional[Union[int, float]] = None,
        block_shape: str = "square",
        normalize: str = "batch",
        gamma_mode: str = "eligible",
        gamma_scale: float = 1.0,
        inplace: bool = False,
        backend: str = "auto",
        classifier: Optional[nn.Module] = None,
        missing_targets: str = "error",
        drop_prob_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.options = Options.get(self.rank, block_size, top_pixels, top_channels, block_shape, normalize,
                                   gamma_mode, gamma_scale)
        self.inplace = validation.check_bool("inplace", inplace)
        self.backend = validation.check_choice("backend", backend, validation.PUBLIC_BACKENDS)
        self.missing_targets = validation.check_choice("missing_targets", missing_targets, MISSING_TARGETS)
        # set_drop_prob(model, p) gives this layer p * drop_prob_scale (per-stage scaling).
        self.drop_prob_scale = validation.check_probability("drop_prob_scale", drop_prob_scale)
        self._p = validation.check_probability("drop_prob", drop_prob)
        self.register_buffer("_drop_prob", torch.tensor([self._p], dtype=torch.float64), persistent=False)
        self.last_dropped: Optional[torch.Tensor] = None
        self.last_rate: Optional[torch.Tensor] = None
        # Elements of the last training batch, as a tensor written in place (as are last_dropped and
        # last_rate under torch.compile): a checkpointed region may not assign Python attributes.
        self.register_buffer("_numel", torch.ones((), dtype=torch.int64), persistent=False)
        self._numel_value = 1
        self._targets: Optional[torch.Tensor] = None
        # seed of a forward -> weakref to its targets (None: it was skipped), for recomputations
        self._history: "collections.OrderedDict[int, Optional[weakref.ref]]" = collections.OrderedDict()
        self._recent: "collections.deque[torch.Tensor]" = collections.deque(maxlen=_RECENT)
        if classifier is not None:
            self.bind(classifier)

    # -- options ---------------------------------------------------------------------------------
    @property
    def drop_prob(self) -> float:
        return self._p

    @drop_prob.setter
    def drop_prob(self, value: float) -> None:
        self._p = validation.check_probability("drop_prob", value)
        with torch.no_grad():
            self._drop_prob.fill_(self._p)

    block_size = property(lambda self: self.options.block_size)
    top_pixels = property(lambda self: self.options.top_pixels)
    top_channels = property(lambda self: self.options.top_channels)
    block_shape = property(lambda self: self.options.block_shape)
    normalize = property(lambda self: self.options.normalize)
    gamma_mode = property(lambda self: self.options.gamma_mode)
    gamma_scale = property(lambda self: self.options.gamma_scale)

    def _apply(self, fn, recurse=True):
        # model.half() / .to(dtype) convert floating buffers: keep the rate exactly float64. And
        # to_empty() (meta -> device, then load_state_dict) leaves buffers uninitialised, while this
        # one is not in the state dict: refill it from the layer's rate every time.
        out = super()._apply(fn, recurse)
        if self._drop_prob.dtype != torch.float64:
            self._drop_prob = torch.tensor([self._p], dtype=torch.float64, device=self._drop_prob.device)
        elif not self._drop_prob.is_meta:
            with torch.no_grad():
                self._drop_prob.fill_(self._p)
        if not self._numel.is_meta:
            with torch.no_grad():
                self._numel.fill_(self._numel_value)
        return out

    # -- guidance ----------------------------------------------------------------------------------
    def bind(self, classifier: nn.Module) -> "CamDropNd":
        """Guide this layer by ``classifier`` (a module with a 2-D ``weight``, e.g. the final nn.Linear)."""
        weight = getattr(classifier, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise TypeError(f"classifier must be a module with a 2-D weight (the final nn.Linear); got "
                            f"{type(classifier).__name__}")
        # A plain attribute, not a submodule: the classifier's parameters stay where they belong.
        self.__dict__["_classifier"] = classifier
        return self

    @property
    def classifier(self) -> Optional[nn.Module]:
        return self.__dict__.get("_classifier")

    def set_targets(self, targets: Optional[torch.Tensor]) -> None:
        """Hand this layer the batch's targets, (N,) class indices or (N, K) soft targets; None clears."""
        self.__dict__["_targets"] = targets
        self.__dict__["_memo"] = None

    def __getstate__(self):
        # Copies and pickles never carry a batch's labels.
        state = self.__dict__.copy()
        state["_targets"] = None
        state["_memo"] = None
        state["_history"] = collections.OrderedDict()
        state["_recent"] = collections.deque(maxlen=_RECENT)
        return state

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cam: Optional[torch.Tensor] = None,
                alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.training:
            return x
        compiling = torch.compiler.is_compiling()
        if compiling and _is_exporting():
            raise RuntimeError(
                f"torch.export of a {type(self).__name__} in training mode would bake one batch's targets (or none) "
                "into the program: export the model in eval mode (model.eval(); CamDrop is the identity there), "
                "or pass the guidance explicitly (forward(x, cam, alpha))")
        if not compiling and _is_fx_tracing():
            # FX symbolic tracing in training mode: record one call of this layer, so that the traced
            # GraphModule runs it as a module (with the targets of its own `targets` blocks).
            return _fx_call(self, x) if cam is None else _fx_call(self, x, cam, alpha)
        if not compiling and _is_functorch_wrapped(x):
            raise RuntimeError(
                f"torch.func transforms (grad, vjp, vmap, ...) through a {type(self).__name__} in training mode are "
                "not supported: compute gradients with loss.backward() or torch.autograd.grad (torch.func."
                "functional_call itself works, inside the targets block), or apply the transform in eval mode, "
                "where CamDrop is the identity")
        # Under torch.compile the rate is a tensor input: never branch on its value there.
        validation.check_rank(self.rank, x, module=True)  # (also when nothing is dropped: bad input fails at once)
        if not compiling and self._p == 0.0:
            return self._nothing_dropped(x)
        if (cam is None) != (alpha is None):
            raise ValueError(f"pass both cam and alpha, or neither (a bound {type(self).__name__} builds them itself)")
        if x.dim() == self.rank + 2 and (x.shape[1] == 0 or x.numel() == 0):
            return self._nothing_dropped(x)
        seed = make_seed(None, None, x)
        if cam is None:
            guidance = self._guidance(x, seed, compiling)
            if guidance is None:
                return self._nothing_dropped(x)
            cam, alpha = guidance
        cam = validation.check_inputs(self.rank, x, cam, alpha, module=True)
        if self.inplace:
            validation.check_inplace(x)
        y, dropped, rate = api.run(x, cam, alpha, self.options, self._drop_prob, seed, self.inplace, self.backend)
        self._record(x, dropped, rate, compiling)
        return y

    def _nothing_dropped(self, x: torch.Tensor) -> torch.Tensor:
        """A training step that drops nothing (rate 0, targets skipped): record zeros and return x."""
        n = x.shape[0] if x.dim() else 0
        self._record(x, torch.zeros((n,), dtype=torch.int64, device=x.device),
                     torch.zeros((n,), dtype=torch.float32, device=x.device), torch.compiler.is_compiling())
        return x

    def _record(self, x: torch.Tensor, dropped: torch.Tensor, rate: torch.Tensor, compiling: bool) -> None:
        """Keep the batch's statistics. Under torch.compile they are copied into the tensors already
        there (``targets`` sizes them for each batch), because inside a checkpointed region
        (torch.utils.checkpoint) dynamo refuses to assign attributes but allows in-place writes."""
        last_dropped, last_rate = self.last_dropped, self.last_rate
        if (compiling and last_dropped is not None and last_rate is not None
                and last_dropped.shape == dropped.shape and last_dropped.dtype == dropped.dtype
                and last_dropped.device == dropped.device and last_rate.shape == rate.shape
                and last_rate.dtype == rate.dtype and last_rate.device == rate.device):
            last_dropped.copy_(dropped)
            last_rate.copy_(rate)
        else:  # (plain attributes: nn.Module.__setattr__'s checks cost microseconds a forward)
            self.__dict__["last_dropped"], self.__dict__["last_rate"] = dropped, rate
        numel = max(1, x.numel())
        if compiling or not x.is_cuda:
            self._numel.fill_(numel)
        elif numel != self._numel_value:
            # Eager CUDA: a fill is a kernel launch, so only when the size changes. (A compiled forward
            # of the same layer cannot update this mirror; mixing compiled and eager CUDA forwards of
            # different sizes could leave the share computed against a stale size: statistics only.)
            self._numel.fill_(numel)
            self._numel_value = numel

    def _size_statistics(self, n: int) -> None:
        """Give last_dropped and last_rate the shape (n,) on the layer's device, so that a compiled
        forward writes them in place (called by ``targets`` before the batch's forward)."""
        device = self._numel.device
        if (self.last_dropped is None or self.last_dropped.shape != (n,) or self.last_dropped.device != device
                or self.last_rate is None or self.last_rate.shape != (n,) or self.last_rate.device != device):
            self.last_dropped = torch.zeros((n,), dtype=torch.int64, device=device)
            self.last_rate = torch.zeros((n,), dtype=torch.float32, device=device)

    def _guidance(self, x: torch.Tensor, seed: torch.Tensor, compiling: bool):
        """(cam, alpha) from the bound classifier and this batch's targets; None to skip this batch."""
        classifier = self.classifier
        name = type(self).__name__
        if classifier is None:
            raise RuntimeError(
                f"{name}.forward(x) needs guidance: call forward(x, cam, alpha), or bind the layer to the model's "
                f"classifier ({name}(..., classifier=model.fc), layer.bind(...), or camdrop_kernels.convert)")
        if getattr(self, "_is_replica", False):
            raise RuntimeError(
                f"a bound {name} cannot run under nn.DataParallel: each replica would see the whole batch's "
                "targets. Use DistributedDataParallel (one process per GPU), which camdrop_kernels supports")
        targets = self._targets if compiling else self._eager_targets(seed)
        if targets is None:
            if self.missing_targets == "skip":
                return None
            raise RuntimeError(
                f"{name} is in training mode but has no targets for this batch: run the forward pass inside "
                "`with camdrop_kernels.targets(model, labels): ...` (every training-mode forward, e.g. also a "
                "SAM-style second forward). A forward that should drop nothing (e.g. torch.optim.swa_utils."
                "update_bn) can run after camdrop_kernels.set_drop_prob(model, 0.0); or construct the layers with "
                "missing_targets='skip' to make them the identity when no targets are given")
        if targets.shape[0] != x.shape[0]:
            raise ValueError(f"targets hold {targets.shape[0]} samples but the batch has {x.shape[0]}")
        if classifier.weight.device != x.device:
            raise ValueError(f"the bound classifier's weight is on {classifier.weight.device} but x is on {x.device}: "
                             "move the whole model to one device")
        with torch.no_grad():
            alpha = self._importance(classifier.weight, targets, x.shape[1], compiling)
            cam = cam_unchecked(x.detach(), alpha)
        return cam, alpha

    def _importance(self, weight: torch.Tensor, targets: torch.Tensor, channels: int, compiling: bool):
        """alpha for this batch; in eager mode shared through the ``targets`` block's memo by the
        layers with the same classifier weight (same version) and channel count (a ResNet stage's
        blocks), so it is computed once a stage, not once a layer. Not while compiling (the graph
        is traced once) nor while a CUDA graph is captured (a replay must recompute it)."""
        if compiling:  # (first: dynamo must not read, and guard on, the per-block dict)
            return importance(weight.detach(), targets, channels)
        memo = self._memo
        if (memo is None or targets is not self._targets or targets.is_inference() or weight.is_inference()
                or (weight.is_cuda and torch.cuda.is_current_stream_capturing())):
            # (inference tensors keep no version counter, so a memo could not see them change)
            return importance(weight.detach(), targets, channels)
        # Shared within one forward of the model only: a layer that already ran since the memo was
        # last cleared starts a new forward, which clears it. So weights updated between two
        # forwards of one block without a version bump (fused optimizers, .data writes) are never
        # missed, and the memo holds one forward's entries at most.
        seen = memo.get("seen")
        if seen is None or id(self) in seen:
            memo.clear()
            seen = memo["seen"] = set()
        seen.add(id(self))
        key = (id(weight), weight._version, targets._version, channels, _autocast_state(weight.device.type))
        hit = memo.get(key)
        if hit is not None and hit[0] is weight:  # (the entry holds the weight: its id cannot be reused)
            return hit[1]
        alpha = importance(weight.detach(), targets, channels)
        memo[key] = (weight, alpha)
        return alpha

    def _eager_targets(self, seed: torch.Tensor) -> Optional[torch.Tensor]:
        """This forward's targets, in eager mode.

        Activation checkpointing runs a checkpointed forward again during backward, after the
        ``targets`` block has ended, with the random state restored, so the recomputation draws the
        same seed. Every forward's targets are therefore remembered under its seed (a CPU value:
        reading it does not sync), and a forward inside the backward pass looks its seed up: found,
        it gets the original forward's targets (the same CAM, channels and mask); not found, it is a
        genuinely new forward (or an unrecorded one, which fails with advice)."""
        targets = self._targets
        if seed.device.type != "cpu":  # drawn on the device (CUDA graph capture): no key without a sync
            return targets
        key = int(seed)
        if torch._C._current_graph_task_id() != -1:  # inside a backward pass
            entry = self._history.get(key, _MISSING)
            if entry is not _MISSING:
                return self._resolve(entry)
            if targets is None:
                raise RuntimeError(
                    f"{type(self).__name__}: a forward is running during backward (activation checkpointing "
                    "recomputing it?) but no earlier eager forward of this layer drew its seed, so its targets are "
                    "unknown. If a compiled module is checkpointed, compile the model with the checkpointing "
                    "inside it instead (e.g. timm's set_grad_checkpointing(True), then torch.compile); otherwise "
                    "the checkpoint must restore the random state (torch.utils.checkpoint's "
                    f"preserve_rng_state=True, the default) and recompute within {_HISTORY} forwards")
            return targets
        if targets is not None:
            self._history[key] = weakref.ref(targets)
            if not any(t is targets for t in self._recent):
                self._recent.append(targets)
        elif self.missing_targets == "skip":
            self._history[key] = None
        else:
            return None
        self._history.move_to_end(key)
        while len(self._history) > _HISTORY:
            self._history.popitem(last=False)
        return targets

    def _resolve(self, entry: Optional[weakref.ref]) -> Optional[torch.Tensor]:
        if entry is None:  # the original forward had no targets and was skipped
            return None
        targets = entry()
        if targets is None:
            raise RuntimeError(
                f"{type(self).__name__}: activation checkpointing is recomputing a forward whose targets have been "
                "freed: keep the labels alive until backward (or keep the `targets` block open around backward)")
        return targets

    # -- statistics ------------------------------------------------------------------------------
    @property
    def last_dropped_fraction(self) -> Optional[torch.Tensor]:
        """Share of the last training batch's elements that were dropped, a 0-d float32 device
        tensor (computing it does not sync; reading its value does). None before the first one."""
        if self.last_dropped is None:
            return None
        return self.last_dropped.sum().to(torch.float32) / self._numel.to(torch.float32)

    @property
    def saturated(self) -> Optional[torch.Tensor]:
        """0-d bool device tensor: did some sample's seed rate reach 1 in the last training batch
        (``drop_prob`` asked for more than the guided region holds)?"""
        if self.last_rate is None:
            return None
        return (self.last_rate >= 1.0).any()

    def extra_repr(self) -> str:
        o = self.options
        parts = [f"drop_prob={self._p}", f"block_size={o.block_size}", f"block_shape={o.block_shape!r}"]
        if o.top_pixels is not None:
            parts.append(f"top_pixels={o.top_pixels}")
        if o.top_channels is not None:
            parts.append(f"top_channels={o.top_channels}")
        parts += [f"normalize={o.normalize!r}", f"gamma_mode={o.gamma_mode!r}"]
        if o.gamma_scale != 1.0:
            parts.append(f"gamma_scale={o.gamma_scale}")
        if self.inplace:
            parts.append("inplace=True")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        if self.classifier is not None:
            parts.append(f"bound to {type(self.classifier).__name__}({tuple(self.classifier.weight.shape)})")
        if self.missing_targets != "error":
            parts.append(f"missing_targets={self.missing_targets!r}")
        return ", ".join(parts)


class CamDrop1d(CamDropNd):
    """CamDrop on 1-D maps (N, C, L): sequences, audio, time series. See :class:`CamDrop2d`."""

    rank = 1


class CamDrop2d(CamDropNd):
    __doc__ = CamDropNd.__doc__
    rank = 2


class CamDrop3d(CamDropNd):
    """CamDrop on 3-D maps (N, C, D, H, W): video, volumes. See :class:`CamDrop2d`."""

    rank = 3

