"""The regularisers the examples compare, behind one interface: a layer with a settable
``drop_prob`` (times its per-stage ``drop_prob_scale``) and the share of its input it last dropped.

- CamDrop: :class:`camdrop_kernels.CamDrop2d`, bound to the model's classifier.
- The paper's "average-guided" control, :class:`AverageGuided`: CamDrop steered by the
  channel-mean map over all channels instead of the CAM over the top channels, i.e. the same
  block-dropping machinery without the class guidance.
- DropBlock, :class:`DropBlock`: ``torchvision.ops.drop_block2d`` itself, with the share it drops
  read from its mask (replayed from the same random state), not from zeros after a ReLU; on 1-D
  maps :class:`DropBlock1d`, the same algorithm (torchvision has no 1-D one).

Shared by ``evidence.py``, ``cifar10.py``, ``digits.py`` and ``mnist_1d.py`` (each puts this folder on
``sys.path``).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn

import camdrop_kernels as ck
from camdrop_kernels.nn import CamDropNd
from camdrop_kernels.viz import dropblock_mask


class AverageGuided(ck.CamDrop2d):
    """CamDrop guided by the channel-mean map with every channel eligible (alpha = 1): the
    paper's control for "is the class guidance what helps?". Needs no classifier or targets."""

    def __init__(self, drop_prob: float, block_size: int, **options) -> None:
        super().__init__(drop_prob, block_size, top_channels=1.0, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if not self.training:
            return x
        with torch.no_grad():
            cam = x.detach().mean(1)
            alpha = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        return super().forward(x, cam, alpha)


class _SettableDropBlock(nn.Module):
    """A DropBlock layer with a settable ``drop_prob`` (times ``drop_prob_scale``, which
    :func:`set_rate` applies) and the share its mask dropped, ``last_dropped_fraction`` (a 0-d
    tensor); the identity in eval mode and at rate 0. Subclasses drop in :meth:`_drop`."""

    def __init__(self, drop_prob: float, block_size: int, drop_prob_scale: float = 1.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        self.block_size = block_size
        self.drop_prob_scale = drop_prob_scale
        self.last_dropped_fraction = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            if self.training:
                self.last_dropped_fraction = torch.zeros((), device=x.device)
            return x
        return self._drop(x)

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob}, block_size={self.block_size}, drop_prob_scale={self.drop_prob_scale}"


class DropBlock(_SettableDropBlock):
    """``torchvision.ops.drop_block2d`` as a layer with a settable rate; ``last_dropped_fraction``
    is the share its mask dropped (a 0-d tensor), read from the mask itself: the mask is rebuilt
    with :func:`camdrop_kernels.viz.dropblock_mask` from the random state torchvision drew from."""

    def __init__(self, drop_prob: float, block_size: int, drop_prob_scale: float = 1.0) -> None:
        super().__init__(drop_prob, block_size, drop_prob_scale)
        from torchvision.ops import drop_block2d  # torchvision is a dev/example dependency only

        self._drop_block2d = drop_block2d

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        size = min(self.block_size, x.shape[-1], x.shape[-2])
        generator = torch.cuda if x.device.type == "cuda" else torch
        before = generator.get_rng_state()
        y = self._drop_block2d(x, self.drop_prob, size)
        after = generator.get_rng_state()
        generator.set_rng_state(before)
        with torch.no_grad():
            self.last_dropped_fraction = dropblock_mask(x, self.drop_prob, size).float().mean()
        generator.set_rng_state(after)
        return y


class DropBlock1d(_SettableDropBlock):
    """DropBlock on 1-D maps (N, C, L), the algorithm of torchvision's ``drop_block2d`` in 1-D
    (torchvision has 2-D and 3-D only; even block sizes work here too): Bernoulli seeds at rate
    ``drop_prob * L / (b * (L - b + 1))`` where a whole block of b fits, each grown over the b
    positions from it, the kept rest rescaled by numel / kept."""

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] == 0:
            raise ValueError(f"DropBlock1d expects (N, C, L) maps with L >= 1; got shape {tuple(x.shape)}")
        N, C, L = x.shape
        b = min(self.block_size, L)
        gamma = self.drop_prob * L / (b * (L - b + 1))
        seeds = torch.empty((N, C, L - b + 1), dtype=x.dtype, device=x.device).bernoulli_(min(1.0, gamma))
        # position i is dropped when a seed sits at one of i - b + 1 .. i: a max over b after padding
        # b - 1 zeros on each side (length L + b - 1 -> L)
        dropped = F.max_pool1d(F.pad(seeds, (b - 1, b - 1)), b, stride=1)
        keep = 1.0 - dropped
        self.last_dropped_fraction = dropped.detach().float().mean()
        # (the kept count in at least float32: a float16 sum of 2**16 ones is inf, and the scale 0)
        kept = keep.sum(dtype=torch.promote_types(x.dtype, torch.float32))
        return x * keep * (keep.numel() / (1e-6 + kept)).to(x.dtype)


def regularizer_layers(model: nn.Module) -> List[nn.Module]:
    """Every CamDrop (average-guided included) and DropBlock layer of ``model``."""
    return [m for m in model.modules() if isinstance(m, (CamDropNd, _SettableDropBlock))]


def set_rate(model: nn.Module, drop_prob: float) -> None:
    """Set every regulariser's rate to ``drop_prob`` times its ``drop_prob_scale`` (as
    :func:`camdrop_kernels.set_drop_prob` does for CamDrop layers alone)."""
    ck.set_drop_prob(model, drop_prob)
    for layer in regularizer_layers(model):
        if isinstance(layer, _SettableDropBlock):
            layer.drop_prob = drop_prob * layer.drop_prob_scale


def dropped_share(model: nn.Module) -> torch.Tensor:
    """Share of the regularised maps dropped in the last training batch, averaged over the layers
    (a 0-d tensor; 0 when the model has none or no batch ran yet)."""
    shares = [layer.last_dropped_fraction for layer in regularizer_layers(model)]
    shares = [s.float() for s in shares if s is not None]
    return torch.stack(shares).mean() if shares else torch.zeros(())


def saturated_share(model: nn.Module) -> torch.Tensor:
    """Share of the last batch's samples, over the CamDrop layers, whose seed rate reached 1
    (drop_prob asked for more than the guided region holds); 0 without CamDrop layers."""
    rates = [layer.last_rate for layer in ck.camdrop_layers(model) if layer.last_rate is not None]
    if not rates:
        return torch.zeros(())
    return torch.stack([(r >= 1.0).float().mean() for r in rates]).mean()

