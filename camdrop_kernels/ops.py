"""CamDrop as torch custom ops, dispatched by device, and its one autograd definition.

Ops (``torch.ops.camdrop_kernels``), each with a CPU kernel, a CUDA kernel and a fake (shape)
kernel that imports nothing from triton:

- ``camdrop_state(x, cam, alpha, seed, drop_prob, options) -> (slots, bits, scale, dropped, rate)``:
  SPEC.md steps 1-7, the saved state of ``state.py`` plus per-sample statistics. cam is
  (N, *S); ``seed`` is an int64 and ``drop_prob`` a float64 one-element tensor, on x's device
  or the CPU (a tensor, so a schedule changing the rate every step never recompiles);
  ``options`` is ``Options.key``.
- ``camdrop_apply(x, slots, bits, scale) -> y``: step 8, +0.0 where dropped, else x * scale.
- ``camdrop_apply_(x!, slots, bits, scale)``: the same, written into x.

Every kernel checks what it is handed (dtypes, shapes, devices, contiguity) before any
backend touches memory; index values are checked by the backends (the native code checks
them itself; the Triton kernels mask every index they load). Autograd: ``apply`` is linear
in x for a given state, so :class:`CamDropApply` is the whole autograd story: its backward is
``camdrop_apply`` on dy with the same state (and therefore its own derivative). Eager calls,
``torch.compile`` (which traces this Function) and in-place calls all go through it.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import Tensor

from . import backends, state
from .options import Options, words_per_plane
from .validation import FLOAT_DTYPES as _FLOATS

_lib = torch.library.Library("camdrop_kernels", "DEF")
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


def check_apply_inputs(x, slots, bits, scale) -> None:
    _check_x(x)
    N, C = x.shape[0], x.shape[1]
    words = words_per_plane(math.prod(x.shape[2:]))
    if not isinstance(slots, Tensor) or slots.dtype != torch.int32 or tuple(slots.shape) != (N, C):
        _fail(TypeError, f"slots must be an int32 tensor of shape ({N}, {C})")
    if (not isinstance(bits, Tensor) or bits.dtype != torch.int32 or bits.dim() != 3
            or bits.shape[0] != N or bits.shape[2] != words):
        _fail(TypeError, f"bits must be an int32 tensor of shape ({N}, n', {words})")
    cdt = state.compute_dtype(x.dtype)
    if not isinstance(scale, Tensor) or scale.dtype != cdt or tuple(scale.shape) != (N,):
        _fail(TypeError, f"scale must be a {cdt} tensor of shape ({N},)")
    for name, t in (("slots", slots), ("bits", bits), ("scale", scale)):
        if t.device != x.device:
            _fail(ValueError, f"{name} must be on x's device ({x.device}); got {t.device}")
        if not t.is_contiguous():
            _fail(ValueError, f"{name} must be contiguous")


# ---------------------------------------------------------------------------------------------
# Kernels, per device (the backend is chosen at run time by the registry)
# ---------------------------------------------------------------------------------------------
def _state_kernel(x, cam, alpha, seed, drop_prob, options):
    opts = check_state_inputs(x, cam, alpha, seed, drop_prob, options)
    out = state.allocate(x, opts)
    if x.numel() == 0:
        return _empty_state(x, out)
    backends.select(x.device.type).build_state(x, cam, alpha, seed, drop_prob, opts, out)
    return out


def _empty_state(x, out):
    """An empty x drops nothing: every slot -1, scale 1 (0 elements kept of 0 is not a division)."""
    slots, bits, scale, dropped, rate = out
    slots.fill_(-1)
    bits.zero_()
    scale.fill_(1.0)
    dropped.zero_()
    rate.zero_()
    return out


def _apply_kernel(x, slots, bits, scale):
    check_apply_inputs(x, slots, bits, scale)
    y = torch.empty_like(x)
    if x.numel():
        backends.select(x.device.type).apply(x, y, slots, bits, scale)
    return y


def _apply_inplace_kernel(x, slots, bits, scale):
    check_apply_inputs(x, slots, bits, scale)
    if any(stride == 0 and size > 1 for stride, size in zip(x.stride(), x.shape)):
        _fail(ValueError, "x must not have overlapping elements (an expanded tensor) to be written in place")
    if x.numel():
        backends.select(x.device.type).apply(x, x, slots, bits, scale)


for _key in ("CPU", "CUDA"):
    _lib.impl("camdrop_state", _state_kernel, _key)
    _lib.impl("camdrop_apply", _apply_kernel, _key)
    _lib.impl("camdrop_apply_", _apply_inplace_kernel, _key)


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


camdrop_state = torch.ops.camdrop_kernels.camdrop_state.default
camdrop_apply = torch.ops.camdrop_kernels.camdrop_apply.default
camdrop_apply_ = torch.ops.camdrop_kernels.camdrop_apply_.default


# ---------------------------------------------------------------------------------------------
# Autograd: the one definition
# ---------------------------------------------------------------------------------------------
class CamDropApply(torch.autograd.Function):
    """y = apply(x, state) (in place when asked); dx = apply(dy, state). Linear in x, so the
    backward is the same Function on dy and double backward comes for free."""

    @staticmethod
    def forward(ctx, x: Tensor, slots: Tensor, bits: Tensor, scale: Tensor, inplace: bool) -> Tensor:
        ctx.save_for_backward(slots, bits, scale)
        if inplace:
            camdrop_apply_(x, slots, bits, scale)
            ctx.mark_dirty(x)
            return x
        return camdrop_apply(x, slots, bits, scale)

    @staticmethod
    def backward(ctx, dy: Tensor):
        slots, bits, scale = ctx.saved_tensors
        return CamDropApply.apply(dy, slots, bits, scale, False), None, None, None, None


def apply(x: Tensor, slots: Tensor, bits: Tensor, scale: Tensor, inplace: bool = False) -> Tensor:
    """Step 8 with autograd where x takes part in it (the op alone where it does not)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return CamDropApply.apply(x, slots, bits, scale, inplace)
    if inplace:
        camdrop_apply_(x, slots, bits, scale)
        return x
    return camdrop_apply(x, slots, bits, scale)


def build_state(x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: Tensor,
                opts: Options) -> Tuple[Tensor, ...]:
    """(slots, bits, scale, dropped, rate) for validated inputs (cam (N, *S), detached)."""
    return camdrop_state(x.detach(), cam, alpha, seed, drop_prob, opts.key)
