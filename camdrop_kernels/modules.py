"""``CamDrop2d``: the nn.Module form of :func:`camdrop_kernels.camdrop`, optionally guided by a classifier."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from . import validation
from .api import camdrop_with_counts
from .guidance import _channel_importance, class_activation_map

MISSING_TARGETS = ("error", "skip")


class CamDrop2d(nn.Module):
    """CamDrop as a layer; the identity in eval mode or at drop_prob 0.

    Two ways to guide it:

    - explicitly: ``forward(x, cam, alpha)``;
    - bound to the model's final linear layer (``classifier=`` or :meth:`bind`): ``forward(x)``
      builds ``alpha = channel_importance(classifier.weight, targets, C)`` and
      ``cam = class_activation_map(x, alpha)`` itself, without gradient, from the batch's targets
      handed over by :func:`camdrop_kernels.targets` (or :meth:`set_targets`).

    The parameters are validated here, at construction. The classifier is referenced, not
    registered: it stays out of this layer's parameters and state_dict. ``last_dropped_fraction``
    holds the fraction of the last training batch that was dropped, as a device tensor
    (reading it syncs; keeping it does not).
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
        classifier: Optional[nn.Module] = None,
        missing_targets: str = "error",
        drop_prob_scale: float = 1.0,
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
        self.missing_targets = validation.check_choice("missing_targets", missing_targets, MISSING_TARGETS)
        # set_drop_prob(model, p) gives this layer p * drop_prob_scale (per-stage scaling).
        self.drop_prob_scale = validation.check_probability("drop_prob_scale", drop_prob_scale)
        self.last_dropped_fraction: Optional[torch.Tensor] = None
        self._targets: Optional[torch.Tensor] = None
        self._classifier: Optional[nn.Module] = None
        if classifier is not None:
            self.bind(classifier)

    def bind(self, classifier: nn.Module) -> "CamDrop2d":
        """Guide this layer by ``classifier`` (a module with a 2-D ``weight``, e.g. the final nn.Linear)."""
        weight = getattr(classifier, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise TypeError(f"classifier must be a module with a 2-D weight (the final nn.Linear); got "
                            f"{type(classifier).__name__}")
        # A plain attribute, not a submodule: the classifier's parameters stay where they belong.
        self.__dict__["_classifier"] = classifier
        return self

    @property
    def classifier(self) -> Optional[nn.Module]:
        return self.__dict__.get("_classifier")

    def set_targets(self, targets: Optional[torch.Tensor]) -> None:
        """Hand this layer the batch's targets, (N,) class indices or (N, K) soft targets; None clears."""
        self._targets = targets

    def forward(self, x: torch.Tensor, cam: Optional[torch.Tensor] = None,
                alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.training:
            return x
        if self.drop_prob == 0.0:
            return self._nothing_dropped(x)
        if (cam is None) != (alpha is None):
            raise ValueError("pass both cam and alpha, or neither (a bound CamDrop2d builds them itself)")
        if cam is None:
            guidance = self._guidance(x)
            if guidance is None:
                return self._nothing_dropped(x)
            cam, alpha = guidance
        y, dropped = camdrop_with_counts(
            x, cam, alpha, self.drop_prob, self.block_size, top_pixels=self.top_pixels,
            top_channels=self.top_channels, block_shape=self.block_shape, normalize=self.normalize,
            gamma_mode=self.gamma_mode, gamma_scale=self.gamma_scale, inplace=self.inplace, backend=self.backend,
        )
        if dropped is None:
            return self._nothing_dropped(x)
        self.last_dropped_fraction = dropped.sum() / x.numel()
        return y

    def _nothing_dropped(self, x: torch.Tensor) -> torch.Tensor:
        """A training step that drops nothing (rate 0, targets skipped): record 0 and return x."""
        self.last_dropped_fraction = x.new_zeros((), dtype=torch.float32)
        return x

    def _guidance(self, x: torch.Tensor):
        """(cam, alpha) from the bound classifier and the current targets; None to skip this batch."""
        classifier = self.classifier
        if classifier is None:
            raise RuntimeError(
                "CamDrop2d.forward(x) needs guidance: call forward(x, cam, alpha), or bind the layer to the "
                "model's classifier (CamDrop2d(..., classifier=model.fc), layer.bind(...) or convert_resnet)"
            )
        targets = self._targets
        if targets is None:
            if self.missing_targets == "skip":
                return None
            raise RuntimeError(
                "CamDrop2d is in training mode but has no targets for this batch: run the forward pass inside "
                "`with camdrop_kernels.targets(model, labels): ...`, or construct the layers with "
                "missing_targets='skip' to make them the identity when no targets are given"
            )
        if targets.shape[0] != x.shape[0]:
            raise ValueError(f"targets hold {targets.shape[0]} samples but the batch has {x.shape[0]}")
        with torch.no_grad():
            alpha = _channel_importance(classifier.weight.detach(), targets, x.shape[1])
            cam = class_activation_map(x.detach(), alpha)
        return cam, alpha

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
        if self.classifier is not None:
            parts.append(f"bound to {type(self.classifier).__name__}({tuple(self.classifier.weight.shape)})")
        if self.missing_targets != "error":
            parts.append(f"missing_targets={self.missing_targets!r}")
        return ", ".join(parts)
