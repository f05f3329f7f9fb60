"""Vision transformers: CamDrop on the patch tokens of a block's output, viewed as a map.

A ViT block's output is (N, L, C) tokens: ``prefix`` leading tokens (class, distillation and
register tokens) and h * w patch tokens in row-major order. Those patch tokens, channels
innermost, are exactly a channels_last (N, C, h, w) map, so :class:`TokenMap` hands a CamDrop2d
that view (no copy) and leaves the prefix tokens untouched. ``structure.vit_plan`` reads what
``convert`` needs from the model.

Hierarchical models that keep their maps as (N, H, W, C) (Swin, SwinV2, MambaOut, Sequencer:
timm's ``output_fmt="NHWC"``; torchvision's Swin) get :class:`GridMap`: the same channels_last
view of the whole grid. Handing such a map to a CamDrop2d directly would drop along the wrong
axes (H taken for the channels) without any error.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn

from .nn import CamDrop2d


def _check_input(view: nn.Module, x) -> None:
    """A wrapper's input is a tensor of its ``input_dims`` (named by its ``input_layout``)."""
    if not isinstance(x, torch.Tensor) or x.dim() != view.input_dims:
        raise ValueError(f"{type(view).__name__} expects a {view.input_dims}-D input, {view.input_layout}; got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")


class TokenMap(nn.Module):
    """Run ``camdrop`` (a CamDrop2d) on the patch tokens of (N, L, C) tokens as an (N, C, h, w)
    map; the first ``prefix`` tokens pass through. The identity when the CamDrop layer is in eval
    mode (its mode decides, not this wrapper's: ``label_readback`` puts only the layers in train)."""

    def __init__(self, camdrop: CamDrop2d, prefix: int, grid: Tuple[int, int]) -> None:
        super().__init__()
        self.camdrop = camdrop
        self.prefix = int(prefix)
        self.grid = (int(grid[0]), int(grid[1]))

    input_dims = 3  # (N, L, C) tokens (read by convert's hook)
    input_layout = "(N, L, C) tokens"

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.camdrop.training:
            return tokens
        _check_input(self, tokens)
        N, L, C = tokens.shape
        h, w = self._grid(L - self.prefix)
        patches = tokens[:, self.prefix:]
        x = patches.unflatten(1, (h, w)).permute(0, 3, 1, 2)  # (N, C, h, w), channels innermost: a view
        y = self.camdrop(x)
        if y is x:
            return tokens
        y_tokens = y.permute(0, 2, 3, 1).reshape(N, h * w, C)  # (a view when y is channels_last)
        return torch.cat([tokens[:, :self.prefix], y_tokens], 1) if self.prefix else y_tokens

    def _grid(self, patches: int) -> Tuple[int, int]:
        h, w = self.grid
        if h * w == patches:
            return h, w
        side = math.isqrt(patches)  # (dynamic image sizes: a square grid is the only one L tells)
        if side * side == patches:
            return side, side
        raise ValueError(f"{type(self).__name__}: {patches} patch tokens do not fill the {h}x{w} grid this layer was "
                         "converted for, nor a square one: convert the model for this image size")

    def extra_repr(self) -> str:
        return f"prefix={self.prefix}, grid={self.grid}"


class GridMap(nn.Module):
    """Run ``camdrop`` (a CamDrop2d) on an (N, H, W, C) map as its (N, C, H, W) channels_last view
    (no copy); the result is returned in the (N, H, W, C) layout. The identity when the CamDrop
    layer is in eval mode (its mode decides, as for :class:`TokenMap`)."""

    input_dims = 4  # (read by convert's hook)
    input_layout = "(N, H, W, C) map"

    def __init__(self, camdrop: CamDrop2d) -> None:
        super().__init__()
        self.camdrop = camdrop

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        if not self.camdrop.training:
            return grid
        _check_input(self, grid)
        x = grid.permute(0, 3, 1, 2)  # (N, C, H, W), channels innermost: a view
        y = self.camdrop(x)
        return grid if y is x else y.permute(0, 2, 3, 1)
