"""The public functions: validate, pick a backend, run the op (the registered custom op under
torch.compile, a lean autograd.Function calling the same backend in eager mode)."""
from __future__ import annotations

from typing import Optional, Union

import torch

from . import backends, ops, validation
from .config import CamDropConfig
from .philox import make_seed

Top = Optional[Union[int, float]]


def _prepare(x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode,
             gamma_scale, seed, generator, backend):
    """Validate everything; return (cam as (N, H, W), config, seed, generator)."""
    validation.check_choice("backend", backend, validation.BACKENDS)
    return validation.prepare_call(
        x, cam, alpha, drop_prob=drop_prob, block_size=block_size, top_pixels=top_pixels,
        top_channels=top_channels, block_shape=block_shape, normalize=normalize, gamma_mode=gamma_mode,
        gamma_scale=gamma_scale, seed=seed, generator=generator,
    )


def _op_args(cam, alpha, seed_t, cfg: CamDropConfig, backend: str, block_size: int):
    return (cam.detach(), alpha.detach(), seed_t, cfg.drop_prob, block_size, cfg.top_pixels, cfg.top_channels,
            cfg.block_shape, cfg.normalize, cfg.gamma_mode, cfg.gamma_scale, backend)


def camdrop(
    x: torch.Tensor,
    cam: torch.Tensor,
    alpha: torch.Tensor,
    drop_prob: float = 0.1,
    block_size: int = 7,
    *,
    top_pixels: Top = None,
    top_channels: Top = None,
    block_shape: str = "square",
    normalize: str = "batch",
    gamma_mode: str = "dropblock",
    gamma_scale: float = 1.0,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    training: bool = True,
    inplace: bool = False,
    backend: str = "auto",
) -> torch.Tensor:
    """CamDrop (SPEC.md): drop blocks around the top-CAM pixels of the top-alpha channels, then rescale.

    x is (N, C, H, W); cam is (N, H, W) or (N, 1, H, W) at x's resolution; alpha is
    (N, C). Returns x itself when not training, at drop_prob 0, or for an empty x.
    The same ``seed`` gives the same mask on every backend and device. Gradients flow
    to x only.
    """
    return camdrop_with_counts(
        x, cam, alpha, drop_prob, block_size, top_pixels=top_pixels, top_channels=top_channels,
        block_shape=block_shape, normalize=normalize, gamma_mode=gamma_mode, gamma_scale=gamma_scale, seed=seed,
        generator=generator, training=training, inplace=inplace, backend=backend,
    )[0]


def camdrop_with_counts(x, cam, alpha, drop_prob=0.1, block_size=7, *, top_pixels=None, top_channels=None,
                        block_shape="square", normalize="batch", gamma_mode="dropblock", gamma_scale=1.0,
                        seed=None, generator=None, training=True, inplace=False, backend="auto"):
    """:func:`camdrop`, also returning each sample's dropped-element count (a device tensor, or None
    when nothing ran). What CamDrop2d uses to keep its statistics without a host sync."""
    cam, cfg, seed, generator = _prepare(x, cam, alpha, drop_prob, block_size, top_pixels, top_channels,
                                         block_shape, normalize, gamma_mode, gamma_scale, seed, generator, backend)
    validation.check_bool("training", training)
    validation.check_bool("inplace", inplace)
    if not training or cfg.drop_prob == 0.0 or x.numel() == 0:
        return x, None
    if inplace:
        validation.check_inplace(x)
    name = backends.resolve(backend, x)
    seed_t = make_seed(seed, generator, x.device)
    if inplace:
        return ops.camdrop_inplace(x, *_op_args(cam, alpha, seed_t, cfg, name, block_size))
    return ops.camdrop_functional(x, cam.detach(), alpha.detach(), seed_t, cfg, block_size, name)


def camdrop_mask(
    x: torch.Tensor,
    cam: torch.Tensor,
    alpha: torch.Tensor,
    drop_prob: float = 0.1,
    block_size: int = 7,
    *,
    top_pixels: Top = None,
    top_channels: Top = None,
    block_shape: str = "square",
    normalize: str = "batch",
    gamma_mode: str = "dropblock",
    gamma_scale: float = 1.0,
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Bool (N, C, H, W), True where :func:`camdrop` with the same arguments drops (for plots and debugging)."""
    cam, cfg, seed, generator = _prepare(x, cam, alpha, drop_prob, block_size, top_pixels, top_channels,
                                         block_shape, normalize, gamma_mode, gamma_scale, seed, generator, backend)
    if cfg.drop_prob == 0.0 or x.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    name = backends.resolve(backend, x)
    seed_t = make_seed(seed, generator, x.device)
    with torch.no_grad():
        _, chan, mask, _, _ = ops.camdrop_op(x, *_op_args(cam, alpha, seed_t, cfg, name, block_size))
    return backends.module(name).dense_mask(chan, mask, cfg)
