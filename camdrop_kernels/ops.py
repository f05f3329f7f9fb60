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
- ``check_map_size(x, options, owner)``: warns when x's map is too small for the block; what a
  layer calls under torch.compile, where its own Python cannot warn (see below).

Each kernel checks what it is handed (``checks.py``), hands the backend tensors it can read
(no zero tensors, no negative bit, aligned), and asks the registry once which backend runs.

Autograd, the one definition: for a given state the output is linear in x, so the backward of
``camdrop`` and of ``camdrop_apply`` is ``camdrop_apply`` on dy with the same state (which makes
double backward its own derivative). The in-place op takes part in autograd through the same
path: the out-of-place apply, then ``x.copy_`` (so torch's own in-place rules apply: a leaf that
requires grad is refused before anything is written, views rebase their history). Forward-mode
AD (``torch.autograd.forward_ad``) is handled by :func:`forward` the same way: the tangent's
output is the apply of the tangent; the ops called directly with a dual tensor refuse it.
"""
from __future__ import annotations

import weakref
from typing import Tuple

import torch
import torch.autograd.forward_ad as _fwad
from torch import Tensor

from . import backends, checks, cpp, notices, state
from .options import Options

_lib = torch.library.Library("camdrop_kernels", "DEF")
_lib.define("camdrop(Tensor x, Tensor cam, Tensor alpha, Tensor seed, Tensor drop_prob, str options) "
            "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)")
_lib.define("camdrop_state(Tensor x, Tensor cam, Tensor alpha, Tensor seed, Tensor drop_prob, str options) "
            "-> (Tensor, Tensor, Tensor, Tensor, Tensor)")
_lib.define("camdrop_apply(Tensor x, Tensor slots, Tensor bits, Tensor scale) -> Tensor")
_lib.define("camdrop_apply_(Tensor(a!) x, Tensor slots, Tensor bits, Tensor scale) -> ()")
_SCHEMAS = ("camdrop", "camdrop_state", "camdrop_apply", "camdrop_apply_")

camdrop_forward = torch.ops.camdrop_kernels.camdrop.default
camdrop_state = torch.ops.camdrop_kernels.camdrop_state.default
camdrop_apply = torch.ops.camdrop_kernels.camdrop_apply.default
camdrop_apply_ = torch.ops.camdrop_kernels.camdrop_apply_.default


# ---------------------------------------------------------------------------------------------
# Kernels, per device (the backend is chosen once per call, by the registry)
# ---------------------------------------------------------------------------------------------
# Dual tensors (forward-mode AD) handed to the ops directly: the C++ autograd refuses them ("jvp is
# not implemented"); torch.library's Python autograd would drop the tangent without a word, so
# where it serves (no _C), the Python kernels refuse them.
_REFUSE_TANGENTS = cpp.C is None


def _forward_kernel(device_type: str):
    def camdrop(x, cam, alpha, seed, drop_prob, options):
        opts = checks.state_inputs(x, cam, alpha, seed, drop_prob, options)
        checks.values(seed, drop_prob)
        if _REFUSE_TANGENTS:
            checks.no_tangent(x)
        y = torch.empty_like(x)
        out = state.allocate(x, opts)
        if x.numel() == 0:
            return (y,) + state.empty(out)
        x, cam, alpha = checks.readable(x, "x"), checks.readable(cam, "cam"), checks.readable(alpha, "alpha")
        backends.select(device_type).forward(x, cam, alpha, seed, drop_prob, opts, y, out)
        return (y,) + out

    return camdrop


def _state_kernel(device_type: str):
    def camdrop_state(x, cam, alpha, seed, drop_prob, options):
        opts = checks.state_inputs(x, cam, alpha, seed, drop_prob, options)
        checks.values(seed, drop_prob)
        out = state.allocate(x, opts)
        if x.numel() == 0:
            return state.empty(out)
        x, cam, alpha = checks.readable(x, "x"), checks.readable(cam, "cam"), checks.readable(alpha, "alpha")
        backends.select(device_type).build_state(x, cam, alpha, seed, drop_prob, opts, out)
        return out

    return camdrop_state


def _apply_kernel(device_type: str):
    def camdrop_apply(x, slots, bits, scale):
        checks.apply_inputs(x, slots, bits, scale)
        checks.state_memory(slots, bits, scale)
        if _REFUSE_TANGENTS:
            checks.no_tangent(x)
        y = torch.empty_like(x)
        if x.numel():
            backends.select(device_type).apply(checks.readable(x, "x"), y, slots, bits, scale)
        return y

    return camdrop_apply


def _apply_inplace_kernel(device_type: str):
    def camdrop_apply_(x, slots, bits, scale):
        checks.apply_inputs(x, slots, bits, scale)
        checks.state_memory(slots, bits, scale)
        checks.writable(x)
        if x.numel() == 0:
            return
        source = checks.readable(x, "x")
        if source is x:
            backends.select(device_type).apply(x, x, slots, bits, scale)
        else:  # (x's memory cannot be handed over as it is, e.g. misaligned: write through a copy)
            y = torch.empty_like(source)
            backends.select(device_type).apply(source, y, slots, bits, scale)
            x.copy_(y)
        # As torch's in-place ops do: a tensor autograd saved and that this call changed fails loudly
        # in backward instead of giving wrong gradients.
        torch.autograd.graph.increment_version(x)

    return camdrop_apply_


def _register(prefix: str, key: str, device_type: str) -> None:
    for name, kernel in zip(_SCHEMAS, (_forward_kernel, _state_kernel, _apply_kernel, _apply_inplace_kernel)):
        _lib.impl(prefix + name, kernel(device_type), key)


# CUDA: the Python kernels (Triton launches). CPU: the C++ kernels of camdrop_kernels._C where it
# loads (it registers them itself, with the autograd below in C++), and these Python kernels as
# twin ops ``_python_*`` for the backend overrides it hands calls to; else these Python kernels.
_register("", "CUDA", "cuda")
if cpp.C is None:
    _register("", "CPU", "cpu")
else:
    for _name, _schema in zip(_SCHEMAS, (
            "(Tensor x, Tensor cam, Tensor alpha, Tensor seed, Tensor drop_prob, str options) -> "
            "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
            "(Tensor x, Tensor cam, Tensor alpha, Tensor seed, Tensor drop_prob, str options) -> "
            "(Tensor, Tensor, Tensor, Tensor, Tensor)",
            "(Tensor x, Tensor slots, Tensor bits, Tensor scale) -> Tensor",
            "(Tensor(a!) x, Tensor slots, Tensor bits, Tensor scale) -> ()")):
        _lib.define(f"_python_{_name}{_schema}")
    _register("_python_", "CPU", "cpu")


@torch.library.register_fake("camdrop_kernels::camdrop")
def _forward_fake(x, cam, alpha, seed, drop_prob, options):
    return (torch.empty_like(x),) + state.allocate(x, checks.state_inputs(x, cam, alpha, seed, drop_prob, options))


@torch.library.register_fake("camdrop_kernels::camdrop_state")
def _state_fake(x, cam, alpha, seed, drop_prob, options):
    return state.allocate(x, checks.state_inputs(x, cam, alpha, seed, drop_prob, options))


@torch.library.register_fake("camdrop_kernels::camdrop_apply")
def _apply_fake(x, slots, bits, scale):
    checks.apply_inputs(x, slots, bits, scale)
    return torch.empty_like(x)


@torch.library.register_fake("camdrop_kernels::camdrop_apply_")
def _apply_inplace_fake(x, slots, bits, scale):
    checks.apply_inputs(x, slots, bits, scale)


# ---------------------------------------------------------------------------------------------
# The map-size check a compiled layer cannot make itself
# ---------------------------------------------------------------------------------------------
# A layer's eager forward warns from Python when its map is too small for the block
# (Options.small_map_warning). Under torch.compile that Python is traced, and a warning there would
# break the graph, so the layer calls this op instead: its fake kernel warns while the graph is
# traced (once per compilation, not per step; with dynamic shapes, at the traced size), and AOT
# backends drop it from the compiled graph (no output, no mutation: nothing to keep), so it costs
# a compiled step nothing (backend="eager" keeps it: a check of microseconds a step).
_lib.define("check_map_size(Tensor x, str options, str owner) -> ()")
check_map_size = torch.ops.camdrop_kernels.check_map_size.default


def _static(size):
    """A dimension's value, or its example value when symbolic (read without adding a guard: a
    warning must not specialise the graph); None when it has none."""
    if isinstance(size, int):
        return size
    hint = getattr(getattr(size, "node", None), "hint", None)
    return hint if isinstance(hint, int) else None


def _check_map_size(x, options, owner):
    opts = Options.decode(options)
    if x.dim() != opts.rank + 2:
        raise ValueError(f"x must be (N, C, *S) with {opts.rank} spatial axes for these options; got shape "
                         f"{tuple(x.shape)}")
    sizes = [_static(s) for s in x.shape[1:]]
    if any(s is None for s in sizes):
        return
    message = opts.small_map_warning(owner, sizes[0], tuple(sizes[1:]))
    if message is None:
        return
    # One compilation runs this fake kernel several times (dynamo's and AOT's traces), and torch's
    # own warning contexts reset Python's once-per-place registry in between: say it once per
    # compilation, at the user's line (dynamo's and torch's frames skipped).
    context = _tracing_context()
    if context is not None:
        said = _WARNED.setdefault(context, set())
        if message in said:
            return
        said.add(message)
    notices.warn(message)


# The messages said in each compilation, by its tracing context (one object per compilation, shared
# by dynamo's and AOT's traces; compile ids restart after torch._dynamo.reset(), these objects do not).
_WARNED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tracing_context():
    try:
        return torch._guards.TracingContext.try_get()
    except AttributeError:  # (another torch's internals: warn every time rather than never)
        return None


for _key in ("CPU", "CUDA"):
    _lib.impl("check_map_size", _check_map_size, _key)
torch.library.register_fake("camdrop_kernels::check_map_size")(_check_map_size)


# ---------------------------------------------------------------------------------------------
# Autograd: the one definition
# ---------------------------------------------------------------------------------------------
def _save_state(ctx, inputs, output) -> None:
    """Save (slots, bits, scale): from the outputs of ``camdrop``, the inputs of ``camdrop_apply``."""
    if isinstance(output, tuple):
        ctx.save_for_backward(*output[1:4])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # (no zero gradients made for the statistics: launches on CUDA)
    else:
        ctx.save_for_backward(*inputs[1:4])


def _backward(ctx, dy, *_statistics):
    """dx = apply(dy, state); nothing flows to cam, alpha, the state, the seed or the rate."""
    slots, bits, scale = ctx.saved_tensors
    dx = None if dy is None else camdrop_apply(dy, slots, bits, scale)
    return (dx,) + (None,) * (5 if _statistics else 3)


if cpp.C is None:  # (else csrc/torch/ops.cpp registers the same definition in C++)
    torch.library.register_autograd("camdrop_kernels::camdrop", _backward, setup_context=_save_state)
    torch.library.register_autograd("camdrop_kernels::camdrop_apply", _backward, setup_context=_save_state)


def _apply_inplace_autograd(x, slots, bits, scale):
    """camdrop_apply_ at the Autograd key: with x in the graph, the out-of-place apply (its
    autograd above) copied into x, so torch's in-place rules and history rebasing apply; else the
    in-place kernel below autograd."""
    if torch.is_grad_enabled() and x.requires_grad:
        x.copy_(camdrop_apply(x, slots, bits, scale))
        return
    with torch._C._AutoDispatchBelowAutograd():
        camdrop_apply_(x, slots, bits, scale)


if cpp.C is None:
    _lib.impl("camdrop_apply_", _apply_inplace_autograd, "Autograd")


# ---------------------------------------------------------------------------------------------
# What the API and the layers call
# ---------------------------------------------------------------------------------------------
def build_state(x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: Tensor,
                opts: Options) -> Tuple[Tensor, ...]:
    """(slots, bits, scale, dropped, rate) for x (cam (N, *S)); no autograd."""
    return camdrop_state(x.detach(), cam.detach(), alpha.detach(), seed, drop_prob, opts.key)


def forward(x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: Tensor, opts: Options,
            inplace: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """(y, dropped, rate) for x (cam (N, *S)), with autograd where x takes part (reverse mode
    through the ops; forward mode here: the tangent's output is the apply of the tangent)."""
    if cam.requires_grad:
        cam = cam.detach()
    if alpha.requires_grad:
        alpha = alpha.detach()
    if _fwad._current_level >= 0:
        tangent = _fwad.unpack_dual(x).tangent
        if tangent is not None:
            return _forward_dual(x, tangent, cam, alpha, seed, drop_prob, opts, inplace)
    if inplace:
        if torch.is_grad_enabled() and x.requires_grad:
            y, _, _, _, dropped, rate = camdrop_forward(x, cam, alpha, seed, drop_prob, opts.key)
            return x.copy_(y), dropped, rate
        slots, bits, scale, dropped, rate = camdrop_state(x.detach(), cam, alpha, seed, drop_prob, opts.key)
        camdrop_apply_(x, slots, bits, scale)
        return x, dropped, rate
    y, _, _, _, dropped, rate = camdrop_forward(x, cam, alpha, seed, drop_prob, opts.key)
    return y, dropped, rate


def _forward_dual(x, tangent, cam, alpha, seed, drop_prob, opts, inplace):
    primal = _fwad.unpack_dual(x).primal
    slots, bits, scale, dropped, rate = camdrop_state(primal.detach(), cam, alpha, seed, drop_prob, opts.key)
    y_tangent = camdrop_apply(tangent, slots, bits, scale)
    if inplace:
        x.copy_(_fwad.make_dual(camdrop_apply(primal, slots, bits, scale), y_tangent))
        return x, dropped, rate
    return _fwad.make_dual(camdrop_apply(primal, slots, bits, scale), y_tangent), dropped, rate
