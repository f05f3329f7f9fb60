"""``CamDrop2d``: the nn.Module form of :func:`camdrop_kernels.camdrop`."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from . import validation
from .api import camdrop


class CamDrop2d(nn.Module):
    """CamDrop as a layer: ``forward(x, cam, alpha)``; the identity in eval mode or at drop_prob 0.

    Holds CamDrop's parameters (see :func:`camdrop_kernels.camdrop`); they are validated
    here, at construction, so a bad setting fails before training starts.
    """

    def __init__(
        self,
        drop_prob: float = 0.1,
        block_size: int = 7,
        *,
        top_pixels: Optional[Union[int, float]] = None,
        top_channels: Optional[Union[int, float]] = None,
        block_shape: str = "square",
        normalize: str = "batch",
        gamma_mode: str = "dropblock",
        gamma_scale: float = 1.0,
        inplace: bool = False,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        opts = validation.check_options(
            drop_prob=drop_prob, block_size=block_size, top_pixels=top_pixels, top_channels=top_channels,
            block_shape=block_shape, normalize=normalize, gamma_mode=gamma_mode, gamma_scale=gamma_scale, seed=None,
        )
        self.drop_prob = opts["drop_prob"]
        self.block_size = opts["block_size"]
        self.top_pixels = opts["top_pixels"]
        self.top_channels = opts["top_channels"]
        self.block_shape = opts["block_shape"]
        self.normalize = opts["normalize"]
        self.gamma_mode = opts["gamma_mode"]
        self.gamma_scale = opts["gamma_scale"]
        self.inplace = validation.check_bool("inplace", inplace)
        self.backend = validation.check_choice("backend", backend, validation.BACKENDS)

    def forward(self, x: torch.Tensor, cam: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        return camdrop(
            x, cam, alpha, self.drop_prob, self.block_size, top_pixels=self.top_pixels,
            top_channels=self.top_channels, block_shape=self.block_shape, normalize=self.normalize,
            gamma_mode=self.gamma_mode, gamma_scale=self.gamma_scale, inplace=self.inplace, backend=self.backend,
        )

    def extra_repr(self) -> str:
        parts = [f"drop_prob={self.drop_prob}", f"block_size={self.block_size}", f"block_shape={self.block_shape!r}"]
        if self.top_pixels is not None:
            parts.append(f"top_pixels={self.top_pixels}")
        if self.top_channels is not None:
            parts.append(f"top_channels={self.top_channels}")
        parts += [f"normalize={self.normalize!r}", f"gamma_mode={self.gamma_mode!r}"]
        if self.gamma_scale != 1.0:
            parts.append(f"gamma_scale={self.gamma_scale}")
        if self.inplace:
            parts.append("inplace=True")
        if self.backend != "auto":
            parts.append(f"backend={self.backend!r}")
        return ", ".join(parts)
