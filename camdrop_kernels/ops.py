"""CamDrop as torch custom ops, dispatched by device, and its one autograd definition.

Ops (``torch.ops.camdrop_kernels``), each with a CPU kernel, a CUDA kernel and a fake (shape)
kernel that imports nothing from triton:

- ``camdrop(x, cam, alpha, seed, drop_prob, options) -> (y, slots, bits, scale, dropped, rate)``:
  the whole forward (the state, then the apply) in one call.
- ``camdrop_state(x, cam, alpha, seed, drop_prob, options) -> (slots, bits, scale, dropped, rate)``:
  SPEC.md steps 1-7, the saved state of ``state.py`` plus per-sample statistics. cam is
  (N, *S); ``seed`` is an int64 and ``drop_prob`` a float64 one-element tensor, on x's device
  or the CPU (a tensor, so a schedule changing the rate every step never recompiles);
  ``options`` is ``Options.key``.
- ``camdrop_apply(x, slots, bits, scale) -> y``: step 8, +0.0 where dropped, else x * scale.
- ``camdrop_apply_(x!, slots, bits, scale)``: the same, written into x.

In eager mode the functions below call the kernel registered for x's device directly (the one
torch's dispatcher would pick), saving its few microseconds a hop on small tensors; under
torch.compile, and for meta/fake tensors, they go through the dispatcher.

Every kernel checks what it is handed (dtypes, shapes, devices, contiguity) before any
backend touches memory; index values are checked by the backends (the native code checks
them itself; the Triton kernels mask every index they load). Autograd: for a given state the
output is linear in x, so the one backward formula is :class:`CamDropApply` on dy with the same
state (and therefore its own derivative, which gives double backward). :class:`CamDrop` runs
the fused forward and hands its backward to it; in-place calls build the state, then run
:class:`CamDropApply` in place. Eager calls and ``torch.compile`` (which traces these
Functions) take the same path.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from . import backends, state
from .options import Options, words_per_plane
from .validation import FLOAT_DTYPES as _FLOATS
from .validation import check_inplace

_lib = torch.library.Library("camdrop_kernels", "DEF")
_lib.define("camdrop(Tensor x, Tensor cam, Tensor alpha, Tensor seed, Tensor drop_prob, str options) "
            "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
_lib.define("camdrop_state(Tensor x, Tensor cam, Tensor alpha, Tensor seed, Tensor drop_prob, str options) "
            "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
_lib.define("camdrop_apply(Tensor x, Tensor slots, Tensor bits, Tensor scale) -> Tensor")
_lib.define("camdrop_apply_(Tensor(a!) x, Tensor slots, Tensor bits, Tensor scale) -> ()")



# ---------------------------------------------------------------------------------------------
# Checks at the op boundary (metadata only: no device sync)
# ---------------------------------------------------------------------------------------------
def _fail(exc, message):
    raise exc(f"camdrop_kernels op: {message}")


def _check_x(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dtype not in _FLOATS:
        _fail(TypeError, f"{name} must be a float16/bfloat16/float32/float64 tensor")
    if not 3 <= x.dim() <= 5:
        _fail(ValueError, f"{name} must be (N, C, *S) with 1 to 3 spatial axes; got shape {tuple(x.shape)}")


def _check_scalar(t: Tensor, name: str, dtype: torch.dtype, device: torch.device) -> None:
    if t.dtype != dtype or t.numel() != 1:
        _fail(TypeError, f"{name} must be a one-element {dtype} tensor; got {t.dtype} of shape {tuple(t.shape)}")
    if t.device != device and t.device.type != "cpu":
        _fail(ValueError, f"{name} must be on x's device ({device}) or the CPU; got {t.device}")


def check_state_inputs(x, cam, alpha, seed, drop_prob, options) -> Options:
    _check_x(x)
    opts = Options.decode(options)
    if opts.rank != x.dim() - 2:
        _fail(ValueError, f"options are for {opts.rank}-D maps but x has {x.dim() - 2} spatial axes")
    for name, t, shape in (("cam", cam, (x.shape[0],) + tuple(x.shape[2:])), ("alpha", alpha, tuple(x.shape[:2]))):
        if not isinstance(t, Tensor) or t.dtype not in _FLOATS:
            _fail(TypeError, f"{name} must be a floating-point tensor")
        if tuple(t.shape) != shape:
            _fail(ValueError, f"{name} must have shape {shape}; got {tuple(t.shape)}")
        if t.device != x.device:
            _fail(ValueError, f"{name} must be on x's device ({x.device}); got {t.device}")
    _check_scalar(seed, "seed", torch.int64, x.device)
    _check_scalar(drop_prob, "drop_prob", torch.float64, x.device)
    return opts


def _check_values(seed: Tensor, drop_prob: Tensor) -> None:
    """The seed's and the rate's values, where reading them costs no sync (CPU tensors; the real
    kernels only: a fake tensor has no value). Device values are clamped in the kernels."""
    if seed.device.type == "cpu" and int(seed) < 0:
        _fail(ValueError, "seed must be in [0, 2**63)")
    if drop_prob.device.type == "cpu" and not 0.0 <= float(drop_prob) <= 1.0:
        _fail(ValueError, "drop_prob must be in [0, 1]")


def check_apply_inputs(x, slots, bits, scale) -> None:
    _check_x(x)
    N, C = x.shape[0], x.shape[1]
    words = words_per_plane(math.prod(x.shape[2:]))
    cdt = state.compute_dtype(x.dtype)
    for name, t, dtype in (("slots", slots, torch.int32), ("bits", bits, torch.int32), ("scale", scale, cdt)):
        if not isinstance(t, Tensor) or t.dtype != dtype:
            _fail(TypeError, f"{name} must be a {dtype} tensor")
    if tuple(slots.shape) != (N, C):
        _fail(ValueError, f"slots must have shape ({N}, {C}); got {tuple(slots.shape)}")
    if bits.dim() != 3 or bits.shape[0] != N or bits.shape[2] != words:
        _fail(ValueError, f"bits must have shape ({N}, n', {words}); got {tuple(bits.shape)}")
    if tuple(scale.shape) != (N,):
        _fail(ValueError, f"scale must have shape ({N},); got {tuple(scale.shape)}")
    for name, t in (("slots", slots), ("bits", bits), ("scale", scale)):
        if t.device != x.device:
            _fail(ValueError, f"{name} must be on x's device ({x.device}); got {t.device}")
        if not t.is_contiguous():
            _fail(ValueError, f"{name} must be contiguous")


# ---------------------------------------------------------------------------------------------
# Kernels, per device (the backend is chosen at run time by the registry)
# ---------------------------------------------------------------------------------------------
def _checked_state_inputs(backend, x, cam, alpha, seed, drop_prob, options) -> Options:
    """The options, after the checks the backend does not do itself. A backend that checks every
    tensor itself (the native one: ``CHECKS_INPUTS``) only needs x's kind and the options here,
    to size the outputs (an empty x, which no backend sees, gets every check); the others get
    every check."""
    if getattr(backend, "CHECKS_INPUTS", False) and isinstance(x, Tensor) and x.numel():
        _check_x(x)
        opts = Options.decode(options)
        if opts.rank != x.dim() - 2:
            _fail(ValueError, f"options are for {opts.rank}-D maps but x has {x.dim() - 2} spatial axes")
        return opts
    opts = check_state_inputs(x, cam, alpha, seed, drop_prob, options)
    _check_values(seed, drop_prob)
    return opts


def _kernels(device_type: str):
    """The op kernels for one device type (registered under its dispatch key)."""

    def forward_kernel(x, cam, alpha, seed, drop_prob, options):
        backend = backends.select(device_type)
        opts = _checked_state_inputs(backend, x, cam, alpha, seed, drop_prob, options)
        y = torch.empty_like(x)
        out = state.allocate(x, opts)
        if x.numel() == 0:
            return (y,) + _empty_state(out)
        if hasattr(backend, "forward"):  # a fused forward where the backend has one
            backend.forward(x, cam, alpha, seed, drop_prob, opts, y, out)
        else:
            backend.build_state(x, cam, alpha, seed, drop_prob, opts, out)
            backend.apply(x, y, *out[:3])
        return (y,) + out

    def state_kernel(x, cam, alpha, seed, drop_prob, options):
        backend = backends.select(device_type)
        opts = check_state_inputs(x, cam, alpha, seed, drop_prob, options)  # (not the hot path: every check)
        _check_values(seed, drop_prob)
        out = state.allocate(x, opts)
        if x.numel() == 0:
            return _empty_state(out)
        backend.build_state(x, cam, alpha, seed, drop_prob, opts, out)
        return out

    def apply_kernel(x, slots, bits, scale):
        backend = backends.select(device_type)
        if not (getattr(backend, "CHECKS_INPUTS", False) and isinstance(x, Tensor) and x.numel()):
            check_apply_inputs(x, slots, bits, scale)  # (an empty x, which no backend sees, gets every check)
        y = torch.empty_like(x)
        if x.numel():
            backend.apply(x, y, slots, bits, scale)
        return y

    def apply_inplace_kernel(x, slots, bits, scale):
        backend = backends.select(device_type)
        check_apply_inputs(x, slots, bits, scale)
        if x.is_inference() and not torch.is_inference_mode_enabled():
            _fail(RuntimeError, "inplace update to inference tensor x outside InferenceMode is not allowed")
        if any(stride == 0 and size > 1 for stride, size in zip(x.stride(), x.shape)):
            _fail(ValueError, "x must not have overlapping elements (an expanded tensor) to be written in place")
        if x.numel():
            backend.apply(x, x, slots, bits, scale)
        # As torch's in-place ops do: a tensor autograd saved and that this call changed fails loudly
        # in backward instead of giving wrong gradients.
        torch.autograd.graph.increment_version(x)

    return forward_kernel, state_kernel, apply_kernel, apply_inplace_kernel


def _empty_state(out):
    """An empty x drops nothing: every slot -1, scale 1 (0 elements kept of 0 is not a division)."""
    slots, bits, scale, dropped, rate = out
    slots.fill_(-1)
    bits.zero_()
    scale.fill_(1.0)
    dropped.zero_()
    rate.zero_()
    return out


_KERNELS = {"cpu": _kernels("cpu"), "cuda": _kernels("cuda")}
for _key, _device in (("CPU", "cpu"), ("CUDA", "cuda")):
    for _name, _kernel in zip(("camdrop", "camdrop_state", "camdrop_apply", "camdrop_apply_"), _KERNELS[_device]):
        _lib.impl(_name, _kernel, _key)


def _eager_kernels(x: Tensor):
    """In eager mode, for a plain tensor and no active torch mode, the kernels torch's dispatcher
    would pick for x's device, to call them without its few microseconds a hop. None (go through
    the dispatcher) for tensor subclasses (fake tensors, DTensor, ...), under dispatch or function
    modes, for meta tensors, under torch.compile, and while the profiler records (so that it shows
    the ops)."""
    if (type(x) is not Tensor or torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or torch._C._is_torch_function_mode_enabled() or torch._C._autograd._profiler_enabled()):
        return None
    if x.is_cpu:
        return _KERNELS["cpu"]
    if x.is_cuda:
        return _KERNELS["cuda"]
    return None


@torch.library.register_fake("camdrop_kernels::camdrop")
def _forward_fake(x, cam, alpha, seed, drop_prob, options):
    return (torch.empty_like(x),) + state.allocate(x, check_state_inputs(x, cam, alpha, seed, drop_prob, options))


@torch.library.register_fake("camdrop_kernels::camdrop_state")
def _state_fake(x, cam, alpha, seed, drop_prob, options):
    return state.allocate(x, check_state_inputs(x, cam, alpha, seed, drop_prob, options))


@torch.library.register_fake("camdrop_kernels::camdrop_apply")
def _apply_fake(x, slots, bits, scale):
    check_apply_inputs(x, slots, bits, scale)
    return torch.empty_like(x)


@torch.library.register_fake("camdrop_kernels::camdrop_apply_")
def _apply_inplace_fake(x, slots, bits, scale):
    check_apply_inputs(x, slots, bits, scale)


camdrop_forward = torch.ops.camdrop_kernels.camdrop.default
camdrop_state = torch.ops.camdrop_kernels.camdrop_state.default
camdrop_apply = torch.ops.camdrop_kernels.camdrop_apply.default
camdrop_apply_ = torch.ops.camdrop_kernels.camdrop_apply_.default


# ---------------------------------------------------------------------------------------------
# Autograd: the one definition
# ---------------------------------------------------------------------------------------------
def _apply_grad(dy: Tensor, slots: Tensor, bits: Tensor, scale: Tensor) -> Tensor:
    """dx = apply(dy, state), the one backward formula. With grad mode on (create_graph: double
    backward) through CamDropApply, so that dx has the apply's own backward; otherwise the apply
    op itself (an autograd.Function's apply costs tens of microseconds of host time per step)."""
    if torch.is_grad_enabled():
        return CamDropApply.apply(dy, slots, bits, scale, False)
    kernels = _eager_kernels(dy)
    return (kernels[2] if kernels else camdrop_apply)(dy, slots, bits, scale)


class CamDropApply(torch.autograd.Function):
    """y = apply(x, state) (in place when asked); dx = apply(dy, state). Linear in x, so the
    backward is the same Function on dy and double backward comes for free."""

    @staticmethod
    def forward(ctx, x: Tensor, slots: Tensor, bits: Tensor, scale: Tensor, inplace: bool) -> Tensor:
        ctx.save_for_backward(slots, bits, scale)
        kernels = _eager_kernels(x)
        if inplace:
            (kernels[3] if kernels else camdrop_apply_)(x, slots, bits, scale)
            ctx.mark_dirty(x)
            return x
        return (kernels[2] if kernels else camdrop_apply)(x, slots, bits, scale)

    @staticmethod
    def backward(ctx, dy: Tensor):
        slots, bits, scale = ctx.saved_tensors
        return _apply_grad(dy, slots, bits, scale), None, None, None, None


class CamDrop(torch.autograd.Function):
    """The fused forward (state + apply in one op); the backward is :class:`CamDropApply` on dy."""

    @staticmethod
    def forward(ctx, x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: Tensor, options: str):
        y, slots, bits, scale, dropped, rate = _forward(x, cam, alpha, seed, drop_prob, options)
        ctx.save_for_backward(slots, bits, scale)
        ctx.mark_non_differentiable(dropped, rate)
        ctx.set_materialize_grads(False)  # (no zero tensors for the statistics' gradients: two launches on CUDA)
        return y, dropped, rate

    @staticmethod
    def backward(ctx, dy: Tensor, _dropped, _rate):
        if dy is None:
            return None, None, None, None, None, None
        slots, bits, scale = ctx.saved_tensors
        return _apply_grad(dy, slots, bits, scale), None, None, None, None, None


def _setup_forward(ctx, inputs, output):
    ctx.save_for_backward(*output[1:4])
    ctx.mark_non_differentiable(*output[1:])


def _backward_forward(ctx, dy, *_):
    slots, bits, scale = ctx.saved_tensors
    return (None if dy is None else _apply_grad(dy, slots, bits, scale),) + (None,) * 5


def _setup_apply(ctx, inputs, output):
    ctx.save_for_backward(*inputs[1:4])


def _backward_apply(ctx, dy):
    slots, bits, scale = ctx.saved_tensors
    return _apply_grad(dy, slots, bits, scale), None, None, None


# The ops called directly (torch.ops.camdrop_kernels.camdrop / camdrop_apply) are differentiable
# too, with the same backward: the apply on dy.
torch.library.register_autograd("camdrop_kernels::camdrop", _backward_forward, setup_context=_setup_forward)
torch.library.register_autograd("camdrop_kernels::camdrop_apply", _backward_apply, setup_context=_setup_apply)


def _apply_inplace_autograd(x, slots, bits, scale):
    """camdrop_apply_ at the Autograd key (torch cannot attach a formula to a mutating op): with
    grad mode on and x requiring grad, the checks torch's own in-place ops make (a leaf, or a view
    of one, is refused before anything is written), then the in-place apply through CamDropApply,
    which marks x dirty so its history gets the apply's backward; otherwise the kernel below."""
    if torch.is_grad_enabled() and x.requires_grad:
        check_inplace(x)
        CamDropApply.apply(x, slots, bits, scale, True)
        return
    with torch._C._AutoDispatchBelowAutograd():
        camdrop_apply_(x, slots, bits, scale)


_lib.impl("camdrop_apply_", _apply_inplace_autograd, "Autograd")


def _forward(x, cam, alpha, seed, drop_prob, options):
    kernels = _eager_kernels(x)
    return (kernels[0] if kernels else camdrop_forward)(x, cam, alpha, seed, drop_prob, options)


def build_state(x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: Tensor,
                opts: Options) -> Tuple[Tensor, ...]:
    """(slots, bits, scale, dropped, rate) for validated inputs (cam (N, *S))."""
    kernels = _eager_kernels(x)
    return (kernels[1] if kernels else camdrop_state)(x.detach(), cam.detach(), alpha.detach(), seed, drop_prob,
                                                     opts.key)


def forward(x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: Tensor, opts: Options,
            inplace: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """(y, dropped, rate) for validated inputs (cam (N, *S)), with autograd where x takes part."""
    cam, alpha = cam.detach(), alpha.detach()
    grad = torch.is_grad_enabled() and x.requires_grad
    if inplace and grad and torch.compiler.is_compiling():
        # Dynamo mistraces an autograd.Function that mutates its input (mark_dirty): the compiled
        # backward lost the mask and the scale. The out-of-place op and a copy_ trace exactly
        # (functionalised, the copy costs nothing extra once the compiler reuses the buffer).
        y, dropped, rate = CamDrop.apply(x, cam, alpha, seed, drop_prob, opts.key)
        return x.copy_(y), dropped, rate
    if inplace:
        slots, bits, scale, dropped, rate = build_state(x, cam, alpha, seed, drop_prob, opts)
        if grad:
            return CamDropApply.apply(x, slots, bits, scale, True), dropped, rate
        kernels = _eager_kernels(x)
        (kernels[3] if kernels else camdrop_apply_)(x, slots, bits, scale)
        return x, dropped, rate
    if grad:
        return CamDrop.apply(x, cam, alpha, seed, drop_prob, opts.key)
    y, _, _, _, dropped, rate = _forward(x, cam, alpha, seed, drop_prob, opts.key)
    return y, dropped, rate
