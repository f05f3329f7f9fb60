"""Checks at the op boundary: what every registered kernel (and fake kernel) verifies before a
backend touches memory. Metadata only, except the seed's and the rate's values where they are
CPU tensors (reading those costs no device sync).

The registered ops can be called directly (``torch.ops.camdrop_kernels``), so these checks do
not trust the public API to have run; the native code checks again, in C, what it reads.
"""
from __future__ import annotations

import math

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from . import state
from .options import Options, words_per_plane
from .validation import FLOAT_DTYPES, may_overlap
_ITEMSIZE = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4, torch.float64: 8, torch.int32: 4,
             torch.int64: 8}


def fail(exc, message):
    raise exc(f"camdrop_kernels op: {message}")


def _x(x: Tensor, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dtype not in FLOAT_DTYPES:
        fail(TypeError, f"{name} must be a float16/bfloat16/float32/float64 tensor")
    if x.layout is not torch.strided:
        fail(TypeError, f"{name} must be a dense (strided) tensor; got layout {x.layout}")
    if not 3 <= x.dim() <= 5:
        fail(ValueError, f"{name} must be (N, C, *S) with 1 to 3 spatial axes; got shape {tuple(x.shape)}")


def _scalar(t: Tensor, name: str, dtype: torch.dtype, device: torch.device) -> None:
    if not isinstance(t, Tensor) or t.dtype != dtype or t.numel() != 1:
        got = f"{t.dtype} of shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        fail(TypeError, f"{name} must be a one-element {dtype} tensor; got {got}")
    if t.device != device and t.device.type != "cpu":
        fail(ValueError, f"{name} must be on x's device ({device}) or the CPU; got {t.device}")


def state_inputs(x, cam, alpha, seed, drop_prob, options) -> Options:
    """Check the inputs of ``camdrop`` / ``camdrop_state``; return the decoded options."""
    _x(x)
    opts = Options.decode(options)
    if opts.rank != x.dim() - 2:
        fail(ValueError, f"options are for {opts.rank}-D maps but x has {x.dim() - 2} spatial axes")
    for name, t, shape in (("cam", cam, (x.shape[0],) + tuple(x.shape[2:])), ("alpha", alpha, tuple(x.shape[:2]))):
        if not isinstance(t, Tensor) or t.dtype not in FLOAT_DTYPES:
            fail(TypeError, f"{name} must be a floating-point tensor")
        if t.layout is not torch.strided:
            fail(TypeError, f"{name} must be a dense (strided) tensor; got layout {t.layout}")
        if tuple(t.shape) != shape:
            fail(ValueError, f"{name} must have shape {shape}; got {tuple(t.shape)}")
        if t.device != x.device:
            fail(ValueError, f"{name} must be on x's device ({x.device}); got {t.device}")
    _scalar(seed, "seed", torch.int64, x.device)
    _scalar(drop_prob, "drop_prob", torch.float64, x.device)
    return opts


def values(seed: Tensor, drop_prob: Tensor) -> None:
    """The seed's and the rate's values where reading them costs no sync (CPU tensors; real
    kernels only: a fake tensor has no value). Device values are clamped in the kernels."""
    if seed.device.type == "cpu" and int(seed) < 0:
        fail(ValueError, "seed must be in [0, 2**63)")
    if drop_prob.device.type == "cpu" and not 0.0 <= float(drop_prob) <= 1.0:
        fail(ValueError, "drop_prob must be in [0, 1]")


def apply_inputs(x, slots, bits, scale) -> None:
    """Check the inputs of ``camdrop_apply`` / ``camdrop_apply_`` (slot values are checked by the
    backends: the native code in C, Triton masks every index, plain torch before indexing)."""
    _x(x)
    N, C = x.shape[0], x.shape[1]
    words = words_per_plane(math.prod(x.shape[2:]))
    cdt = state.compute_dtype(x.dtype)
    for name, t, dtype in (("slots", slots, torch.int32), ("bits", bits, torch.int32), ("scale", scale, cdt)):
        if not isinstance(t, Tensor) or t.dtype != dtype or t.layout is not torch.strided:
            fail(TypeError, f"{name} must be a dense {dtype} tensor")
    if tuple(slots.shape) != (N, C):
        fail(ValueError, f"slots must have shape ({N}, {C}); got {tuple(slots.shape)}")
    if bits.dim() != 3 or bits.shape[0] != N or bits.shape[2] != words:
        fail(ValueError, f"bits must have shape ({N}, n', {words}); got {tuple(bits.shape)}")
    if tuple(scale.shape) != (N,):
        fail(ValueError, f"scale must have shape ({N},); got {tuple(scale.shape)}")
    for name, t in (("slots", slots), ("bits", bits), ("scale", scale)):
        if t.device != x.device:
            fail(ValueError, f"{name} must be on x's device ({x.device}); got {t.device}")
        if not t.is_contiguous():
            fail(ValueError, f"{name} must be contiguous")


def state_memory(slots: Tensor, bits: Tensor, scale: Tensor) -> None:
    """The saved state as the real kernels read it: ordinary memory (not a zero tensor, a negative
    view or a misaligned buffer). Not for fake tensors, which have no memory."""
    for name, t in (("slots", slots), ("bits", bits), ("scale", scale)):
        if t.numel() and (t._is_zerotensor() or t.is_neg() or t.data_ptr() % _ITEMSIZE[t.dtype] or not t.data_ptr()):
            fail(ValueError, f"{name} must be an ordinary tensor with its own aligned memory (not a zero tensor, "
                             "a negative view or a misaligned buffer)")


def writable(x: Tensor) -> None:
    """What an in-place write into x needs: no zero tensor, no inference tensor outside inference
    mode, no two elements sharing one location."""
    if x._is_zerotensor():
        fail(ValueError, "x is an efficient zero tensor, which cannot be written in place")
    if x.is_inference() and not torch.is_inference_mode_enabled():
        fail(RuntimeError, "inplace update to inference tensor x outside InferenceMode is not allowed")
    if may_overlap(x):
        fail(ValueError, "x has overlapping elements (an expanded or as_strided tensor) and cannot be written in "
                         "place")


def readable(t: Tensor, name: str) -> Tensor:
    """t as memory a backend can read as laid out: an efficient zero tensor (no storage) becomes
    real zeros, a negative view (``is_neg``: the values are the memory negated) is resolved, and
    a data pointer not aligned to the element size (``torch.frombuffer(..., offset=1)``) is
    copied to aligned memory. Anything else is returned as it is, without a copy."""
    if not t.numel():
        return t
    address = t.data_ptr()
    if address and address % _ITEMSIZE[t.dtype] == 0 and not t.is_neg():
        return t
    if t._is_zerotensor():
        return torch.zeros(t.shape, dtype=t.dtype, device=t.device)
    if t.is_neg():
        t = t.resolve_neg()
    if t.data_ptr() % _ITEMSIZE[t.dtype]:
        t = t.clone()
    if not t.data_ptr():
        fail(ValueError, f"{name} has elements but no memory (data pointer 0)")
    return t


def no_tangent(*tensors: Tensor) -> None:
    """Refuse dual tensors (forward-mode AD) handed to the ops directly: their tangent would be
    dropped without a word. ``camdrop_kernels.camdrop`` and the layers support forward-mode AD."""
    if _fwad._current_level >= 0:
        for t in tensors:
            if _fwad.unpack_dual(t).tangent is not None:
                fail(RuntimeError, "forward-mode AD through torch.ops.camdrop_kernels directly is not supported (the "
                                   "tangent would be lost): call camdrop_kernels.camdrop (or a CamDrop layer), which "
                                   "supports it")
