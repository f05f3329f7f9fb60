"""``CamDrop1d``, ``CamDrop2d``, ``CamDrop3d``: the nn.Module forms, a few lines over the function.

What guides a layer that is not handed ``cam`` and ``alpha`` (the bound classifier and the
batch's targets, or its own activations) and what it reports live in its :class:`~.guide.Guide`.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.fx
from torch import nn

from . import api, notices, ops, validation
from .guidance import self_guidance
from .guide import Guide
from .options import Options
from .philox import make_seed


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
torch.fx.wrap("self_guidance")  # (a traced self-guided root layer records it as one node)


# torch.func's wrapper test, looked up once (absent in older torch).
_functorch_wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)


def _fx_tracer(x) -> Optional[torch.fx.Tracer]:
    """The tracer when x is a torch.fx.symbolic_trace proxy (None otherwise)."""
    return x.tracer if isinstance(x, torch.fx.Proxy) else None


class CamDropNd(nn.Module):
    """CamDrop as a layer on (N, C, *S) maps; the identity in eval mode or at drop_prob 0.

    Three ways to guide it:

    - explicitly: ``forward(x, cam, alpha)``;
    - bound to the model's final linear layer (``classifier=``, :meth:`bind`, or ``convert``):
      ``forward(x)`` builds ``alpha = channel_importance(classifier.weight, targets, C)`` and
      ``cam = class_activation_map(x, alpha)`` itself, without gradient, from the batch's targets
      handed over by :func:`camdrop_kernels.targets`;
    - ``guidance="self"``: ``forward(x)`` takes each sample's channel means as alpha and its
      channel-mean map as the CAM (SPEC.md v2.1; no classifier, no labels).

    The options are validated once, here. The rate lives in a float64 buffer that is not saved in
    the state_dict, so ``set_drop_prob`` changes it every step without recompiling a compiled
    model. The classifier is referenced, not registered (state_dict keys do not change). After
    each training forward, ``last_dropped`` (N,) and ``last_rate`` (N,) hold the dropped counts
    and seed rates as device tensors (no sync); see :attr:`last_dropped_fraction`.
    """

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
        guidance: str = "classifier",
    ) -> None:
        super().__init__()
        self.options = Options.get(self.rank, block_size, top_pixels, top_channels, block_shape, normalize,
                                   gamma_mode, gamma_scale)
        self.inplace = validation.check_bool("inplace", inplace)
        self.backend = validation.check_choice("backend", backend, validation.PUBLIC_BACKENDS)
        # set_drop_prob(model, p) gives this layer p * drop_prob_scale (per-stage scaling).
        self.drop_prob_scale = validation.check_probability("drop_prob_scale", drop_prob_scale)
        self._p = validation.check_probability("drop_prob", drop_prob)
        self.register_buffer("_drop_prob", torch.tensor([self._p], dtype=torch.float64), persistent=False)
        # Elements of the last training batch, as a tensor written in place (a checkpointed region
        # may not assign Python attributes under torch.compile).
        self.register_buffer("_numel", torch.ones((), dtype=torch.int64), persistent=False)
        self.guide = Guide(type(self).__name__, guidance, missing_targets)
        if classifier is not None:
            if guidance == "self":
                raise ValueError("guidance='self' uses no classifier: pass classifier=None")
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
    missing_targets = property(lambda self: self.guide.missing_targets)
    guidance = property(lambda self: self.guide.mode)
    classifier = property(lambda self: self.guide.classifier)
    last_dropped = property(lambda self: self.guide.last_dropped)
    last_rate = property(lambda self: self.guide.last_rate)

    def __setstate__(self, state):
        # A layer pickled by release 0.2 (before the Guide) keeps its classifier, missing_targets and
        # statistics as attributes of its own: move them into a Guide.
        if "guide" not in state:
            guide = Guide(type(self).__name__, "classifier", state.pop("missing_targets", "error"))
            classifier = state.pop("_classifier", None)
            if classifier is not None:
                guide.bind(classifier)
            guide.last_dropped, guide.last_rate = state.pop("last_dropped", None), state.pop("last_rate", None)
            guide.numel = state.pop("_numel_value", 1)
            for old in ("_targets", "_memo", "_history", "_recent"):
                state.pop(old, None)
            state["guide"] = guide
        super().__setstate__(state)

    def _apply(self, fn, recurse=True):
        # model.half() / .to(dtype) convert floating buffers: keep the rate exactly float64. And
        # to_empty() (meta -> device, then load_state_dict) leaves buffers uninitialised, while these
        # are not in the state dict: refill them from the layer's values every time.
        out = super()._apply(fn, recurse)
        if self._drop_prob.dtype != torch.float64:
            self._drop_prob = torch.tensor([self._p], dtype=torch.float64, device=self._drop_prob.device)
        elif not self._drop_prob.is_meta:
            with torch.no_grad():
                self._drop_prob.fill_(self._p)
        if not self._numel.is_meta:
            with torch.no_grad():
                self._numel.fill_(self.guide.numel)
        return out

    # -- guidance ----------------------------------------------------------------------------------
    def bind(self, classifier: nn.Module) -> "CamDropNd":
        """Guide this layer by ``classifier`` (a module with a 2-D ``weight``, e.g. the final nn.Linear)."""
        self.guide.bind(classifier)
        return self

    def set_targets(self, targets: Optional[torch.Tensor]) -> None:
        """Hand this layer the batch's targets outside a ``targets`` block, (N,) class indices or
        (N, K) soft targets; None clears them."""
        self.guide.set_targets(targets)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cam: Optional[torch.Tensor] = None,
                alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.training:
            return x
        compiling = torch.compiler.is_compiling()
        if compiling and _is_exporting():
            raise RuntimeError(
                f"torch.export of a {type(self).__name__} in training mode would bake one batch's targets (or none) "
                "into the program: export the model in eval mode (model.eval(); CamDrop is the identity there), or "
                "pass the guidance explicitly (forward(x, cam, alpha))")
        if not compiling:
            self._refuse_tracers(x, cam)
            if _fx_tracer(x) is not None:
                return self._fx_forward(x, cam, alpha)
        validation.check_rank(self.rank, x, module=True)  # (also when nothing is dropped: bad input fails at once)
        if (cam is None) != (alpha is None):
            raise ValueError(f"pass both cam and alpha, or neither (a bound {type(self).__name__} builds them itself)")
        # Under torch.compile the rate is a tensor input: never branch on its value there.
        if (not compiling and self._p == 0.0) or x.shape[1] == 0 or x.numel() == 0:
            return self._nothing_dropped(x, compiling)
        if compiling:  # (warns while the graph is traced; the compiled graph drops the call)
            ops.check_map_size(x, self.options.key, type(self).__name__)
        seed = make_seed(None, None, x)
        if cam is None:
            guidance = self.guide.guidance(x, seed, compiling)
            if guidance is None:
                return self._nothing_dropped(x, compiling)
            cam, alpha = guidance  # (made for x: (N, *S) and (N, C))
        else:
            cam = validation.check_inputs(self.rank, x, cam, alpha, module=True)
        if self.inplace:
            validation.check_inplace(x)
        buffers = self._buffers  # (a dict look-up: nn.Module.__getattr__ costs a microsecond a name)
        y, dropped, rate = api.run(x, cam, alpha, self.options, buffers["_drop_prob"], seed, self.inplace,
                                   self.backend)
        self._record(x, dropped, rate, compiling)
        return y

    def _refuse_tracers(self, x: torch.Tensor, cam: Optional[torch.Tensor]) -> None:
        """Callers that cannot honour a training-mode layer fail with advice, not deep inside."""
        name = type(self).__name__
        # (self.__dict__: nn.Module.__getattr__ raising for a missing name costs microseconds)
        if cam is None and self.__dict__.get("_is_replica", False) and self.guide.mode == "classifier":
            raise RuntimeError(
                f"a bound {name} cannot run under nn.DataParallel: each replica would see the whole batch's "
                "targets. Use DistributedDataParallel (one process per GPU), which camdrop_kernels supports")
        if _functorch_wrapped is not None and isinstance(x, torch.Tensor) and _functorch_wrapped(x):
            raise RuntimeError(
                f"torch.func transforms (grad, vjp, vmap, ...) through a {name} in training mode are not supported: "
                "compute gradients with loss.backward() or torch.autograd.grad (torch.func.functional_call itself "
                "works, inside the targets block), or apply the transform in eval mode, where CamDrop is the identity")

    def _fx_forward(self, x, cam, alpha):
        """Under torch.fx.symbolic_trace: one node for this call. Inside a traced model the node calls
        this layer (so the GraphModule's layers take the targets of its own ``targets`` blocks); a
        layer that is itself the traced root records the functional call (with its guidance)."""
        tracer = _fx_tracer(x)
        if getattr(tracer, "root", None) is not self:
            return _fx_call(self, x) if cam is None else _fx_call(self, x, cam, alpha)
        if cam is None:
            if self.guide.mode != "self":
                raise RuntimeError(f"torch.fx cannot trace a bound {type(self).__name__} by itself (its targets come "
                                   "from the model's targets block): trace the model that holds it, or pass cam and "
                                   "alpha")
            guidance = self_guidance(x)
            cam, alpha = guidance[0], guidance[1]
        fn = {1: api.camdrop1d, 2: api.camdrop, 3: api.camdrop3d}[self.rank]
        o = self.options
        return fn(x, cam, alpha, self._p, o.block_size, top_pixels=o.top_pixels, top_channels=o.top_channels,
                  block_shape=o.block_shape, normalize=o.normalize, gamma_mode=o.gamma_mode,
                  gamma_scale=o.gamma_scale, inplace=self.inplace, backend=self.backend)

    def _nothing_dropped(self, x: torch.Tensor, compiling: bool) -> torch.Tensor:
        """A training step that drops nothing (rate 0, targets skipped, empty x): record zeros."""
        n = x.shape[0] if x.dim() else 0
        self._record(x, torch.zeros((n,), dtype=torch.int64, device=x.device),
                     torch.zeros((n,), dtype=torch.float32, device=x.device), compiling)
        return x

    def _record(self, x: torch.Tensor, dropped: torch.Tensor, rate: torch.Tensor, compiling: bool) -> None:
        guide = self.guide
        numel = max(1, x.numel())
        if compiling:
            guide.record(dropped, rate, compiling)
            self._buffers["_numel"].fill_(numel)
            return
        # Eager: a fill costs a launch on CUDA (and a dispatcher call anywhere), so only when the
        # size changes, or when something else wrote the statistics since the last eager forward (a
        # compiled forward of this layer fills the buffer but cannot update the guide's mirror of
        # the size; it leaves a new mark).
        if numel != guide.numel or guide.mark() != guide.eager_mark:
            self._buffers["_numel"].fill_(numel)
            guide.numel = numel
        if self._p != 0.0 and x.shape[2:] not in self.__dict__.get("_map_sizes_checked", ()):
            self._check_map_size(x)
        guide.record(dropped, rate, compiling)
        guide.eager_mark = guide.mark()

    def _check_map_size(self, x: torch.Tensor) -> None:
        """Warn once per map size when the block is too big for the map (Options.small_map_warning),
        which would otherwise show only as a share near 0 in the statistics. In eager forwards with
        a nonzero rate; a compiled forward asks ``ops.check_map_size`` once per compilation."""
        spatial = tuple(x.shape[2:])
        self.__dict__.setdefault("_map_sizes_checked", set()).add(spatial)
        message = self.options.small_map_warning(type(self).__name__, x.shape[1], spatial)
        if message is not None:
            notices.warn(message)

    # -- statistics ------------------------------------------------------------------------------
    @property
    def input_dims(self) -> int:
        """The dimensions of the input: (N, C, *S) with ``rank`` spatial axes."""
        return self.rank + 2

    @property
    def input_layout(self) -> str:
        return ("(N, C, L)", "(N, C, H, W)", "(N, C, D, H, W)")[self.rank - 1]

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
        if self.guide.mode == "self":
            parts.append("guidance='self'")
        elif self.classifier is not None:
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
