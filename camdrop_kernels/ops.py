"""CamDrop as registered torch custom ops with autograd, so torch.compile keeps it in the graph.

``camdrop_kernels::camdrop`` (functional) returns (y, channels, mask, scale, dropped):
channels, mask and scale are the compact state the backward needs; dropped holds each
sample's count of dropped elements (for statistics, read without a host sync). ``camdrop_kernels::camdrop_backward``
applies the same rule to a gradient and is its own derivative. ``camdrop_kernels::camdrop_``
mutates x; autograd goes through :class:`_InplaceCamDrop`, since torch cannot attach a
formula to a mutating op.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from . import backends
from .config import CamDropConfig, compute_dtype

_State = Tuple[Tensor, Tensor, Tensor, Tensor]


def _config(x: Tensor, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
            gamma_scale) -> CamDropConfig:
    return CamDropConfig.build(tuple(x.shape), drop_prob, block_size, top_pixels, top_channels, block_shape,
                               normalize, gamma_mode, gamma_scale)


def _fake_state(x: Tensor, cfg: CamDropConfig, backend: str) -> _State:
    mod = backends.module(backend)
    chan_shape, chan_dtype = mod.channels_spec(cfg)
    mask_shape, mask_dtype = mod.mask_spec(cfg)
    return (
        x.new_empty(chan_shape, dtype=chan_dtype),
        x.new_empty(mask_shape, dtype=mask_dtype),
        x.new_empty((cfg.N,), dtype=compute_dtype(x.dtype)),
        x.new_empty((cfg.N,), dtype=torch.int64),
    )


@torch.library.custom_op("camdrop_kernels::camdrop", mutates_args=())
def camdrop_op(
    x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: float, block_size: int, top_pixels: int,
    top_channels: int, block_shape: str, normalize: str, gamma_mode: str, gamma_scale: float, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(y, channels, mask, scale, dropped counts) for validated inputs (cam is (N, H, W))."""
    cfg = _config(x, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
                  gamma_scale)
    return backends.module(backend).forward(x, cam, alpha, seed, cfg)


@camdrop_op.register_fake
def _(x, cam, alpha, seed, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
      gamma_scale, backend):
    cfg = _config(x, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
                  gamma_scale)
    return (torch.empty_like(x), *_fake_state(x, cfg, backend))


@torch.library.custom_op("camdrop_kernels::camdrop_", mutates_args=("x",))
def camdrop_inplace_op(
    x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: float, block_size: int, top_pixels: int,
    top_channels: int, block_shape: str, normalize: str, gamma_mode: str, gamma_scale: float, backend: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """In-place CamDrop: writes y into x, returns (channels, mask, scale, dropped counts)."""
    cfg = _config(x, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
                  gamma_scale)
    return backends.module(backend).forward(x, cam, alpha, seed, cfg, inplace=True)[1:]


@camdrop_inplace_op.register_fake
def _(x, cam, alpha, seed, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
      gamma_scale, backend):
    cfg = _config(x, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
                  gamma_scale)
    return _fake_state(x, cfg, backend)


@torch.library.custom_op("camdrop_kernels::camdrop_backward", mutates_args=())
def camdrop_backward_op(dy: Tensor, chan: Tensor, mask: Tensor, scale: Tensor, backend: str) -> Tensor:
    """dx = 0 where dropped, else dy * scale (rounded once to dy's dtype)."""
    return backends.module(backend).backward(dy, chan, mask, scale)


@camdrop_backward_op.register_fake
def _(dy, chan, mask, scale, backend):
    return torch.empty_like(dy)


def _setup_forward(ctx, inputs, output):
    _, chan, mask, scale, _ = output
    ctx.save_for_backward(chan, mask, scale)
    ctx.backend = inputs[-1]


def _backward_forward(ctx, dy, *_state_grads):
    chan, mask, scale = ctx.saved_tensors
    dx = None if dy is None else camdrop_backward_op(dy, chan, mask, scale, ctx.backend)
    return (dx,) + (None,) * 12


def _setup_backward(ctx, inputs, output):
    _, chan, mask, scale, backend = inputs
    ctx.save_for_backward(chan, mask, scale)
    ctx.backend = backend


def _backward_backward(ctx, ddx):
    chan, mask, scale = ctx.saved_tensors
    # The backward is linear in dy with the same mask and scale: it is its own derivative.
    return camdrop_backward_op(ddx, chan, mask, scale, ctx.backend), None, None, None, None


torch.library.register_autograd("camdrop_kernels::camdrop", _backward_forward, setup_context=_setup_forward)
torch.library.register_autograd("camdrop_kernels::camdrop_backward", _backward_backward,
                                setup_context=_setup_backward)


class _EagerCamDrop(torch.autograd.Function):
    """The functional op's eager path: the same backend calls without the custom-op dispatch
    (tens of microseconds a call). torch.compile traces the registered op instead."""

    @staticmethod
    def forward(ctx, x, cam, alpha, seed, cfg, backend):
        y, chan, mask, scale, dropped = backends.module(backend).forward(x, cam, alpha, seed, cfg)
        ctx.mark_non_differentiable(dropped)
        ctx.save_for_backward(chan, mask, scale)
        ctx.backend = backend
        return y, dropped

    @staticmethod
    def backward(ctx, dy, _):
        chan, mask, scale = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: stay on the differentiable op
            dx = camdrop_backward_op(dy, chan, mask, scale, ctx.backend)
        else:
            dx = backends.module(ctx.backend).backward(dy, chan, mask, scale)
        return dx, None, None, None, None, None


def camdrop_functional(x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, cfg: CamDropConfig,
                       block_size: int, backend: str) -> Tuple[Tensor, Tensor]:
    """(y, dropped counts): the registered op under torch.compile, the lean eager path otherwise."""
    if torch.compiler.is_compiling():
        out = camdrop_op(x, cam, alpha, seed, cfg.drop_prob, block_size, cfg.top_pixels, cfg.top_channels,
                         cfg.block_shape, cfg.normalize, cfg.gamma_mode, cfg.gamma_scale, backend)
        return out[0], out[4]
    return _EagerCamDrop.apply(x, cam, alpha, seed, cfg, backend)


class _InplaceCamDrop(torch.autograd.Function):
    """Autograd for the in-place op: marks x dirty and saves the compact state."""

    @staticmethod
    def forward(ctx, x, *args):
        chan, mask, scale, dropped = camdrop_inplace_op(x, *args)
        ctx.mark_dirty(x)
        ctx.mark_non_differentiable(dropped)
        ctx.save_for_backward(chan, mask, scale)
        ctx.backend = args[-1]
        return x, dropped

    @staticmethod
    def backward(ctx, dy, _):
        chan, mask, scale = ctx.saved_tensors
        return (camdrop_backward_op(dy, chan, mask, scale, ctx.backend),) + (None,) * 12


def camdrop_inplace(x: Tensor, *args) -> Tuple[Tensor, Tensor]:
    """Run the in-place op, through autograd when x takes part in it: (x, dropped counts)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _InplaceCamDrop.apply(x, *args)
    return x, camdrop_inplace_op(x, *args)[3]
