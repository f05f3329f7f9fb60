"""Pictures of where CamDrop drops: input, CAM, CamDrop's dropped blocks, DropBlock's for comparison.

matplotlib is an optional extra (``pip install camdrop-kernels[viz]``): it is imported only when a
figure is drawn, so ``import camdrop_kernels`` (and :func:`dropblock_mask` here) never needs it.
The figures are built on ``matplotlib.figure.Figure`` directly, not pyplot: drawing one changes
no global matplotlib state (backend, current figure) of the caller's session.
"""
from __future__ import annotations

from os import PathLike
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from .api import camdrop_mask

PathArg = Union[str, PathLike]

_INSTALL_HINT = ("camdrop_kernels.viz needs matplotlib, an optional extra: pip install camdrop-kernels[viz] "
                 "(or pip install matplotlib)")


def _figure_class():
    """matplotlib's Figure, or an ImportError that says how to install the extra."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    return Figure


def dropblock_mask(x: torch.Tensor, drop_prob: float, block_size: int, *,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Bool mask shaped like x (N, C, H, W), True where DropBlock drops.

    The same algorithm and the same random draws as ``torchvision.ops.drop_block2d`` (one
    ``bernoulli_`` over the valid block centres in x's dtype, padded and max-pooled): with the same
    generator state the mask is the one torchvision applies. Used to show DropBlock beside CamDrop
    and to measure the share it drops from the mask itself (counting zeros after a ReLU would also
    count activations that were zero anyway)."""
    if x.dim() != 4:
        raise ValueError(f"x must be (N, C, H, W); got shape {tuple(x.shape)}")
    if not 0.0 <= drop_prob <= 1.0:
        raise ValueError(f"drop_prob must be in [0, 1]; got {drop_prob}")
    N, C, H, W = x.shape
    block_size = min(block_size, W, H)
    if block_size % 2 == 0:
        raise ValueError(f"block_size must be odd (as in torchvision's drop_block2d); got {block_size}")
    if drop_prob == 0.0:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    gamma = (drop_prob * H * W) / ((block_size ** 2) * ((H - block_size + 1) * (W - block_size + 1)))
    noise = torch.empty((N, C, H - block_size + 1, W - block_size + 1), dtype=x.dtype, device=x.device)
    noise.bernoulli_(gamma, generator=generator)
    noise = F.pad(noise, [block_size // 2] * 4, value=0)
    noise = F.max_pool2d(noise, stride=(1, 1), kernel_size=(block_size, block_size), padding=block_size // 2)
    return noise > 0


def _as_image(image: torch.Tensor):
    """(C, H, W) with C in {1, 3} -> an array for imshow (grayscale or RGB, scaled to [0, 1])."""
    image = image.detach().float().cpu()
    if image.dim() == 3 and image.shape[0] == 1:
        image = image[0]
    elif image.dim() == 3 and image.shape[0] == 3:
        image = image.permute(1, 2, 0)
    elif image.dim() != 2:
        raise ValueError(f"images must be (N, 1, H, W), (N, 3, H, W) or (N, H, W); got one of shape "
                         f"{tuple(image.shape)}")
    lo, hi = image.min(), image.max()
    return ((image - lo) / (hi - lo).clamp_min(1e-12)).numpy()


def _peak(cam: torch.Tensor):
    """(row, column) of the CAM's largest value."""
    return divmod(int(torch.argmax(cam)), cam.shape[-1])


def _mark_peak(ax, row: int, col: int) -> None:
    """A cross at the CAM's peak (white under red, visible on any colour map)."""
    ax.plot([col], [row], marker="x", color="white", markersize=7, markeredgewidth=2.5)
    ax.plot([col], [row], marker="x", color="red", markersize=6, markeredgewidth=1.2)


def _outline(ax, dropped: torch.Tensor, shape) -> None:
    """Outline, on an input image of ``shape`` (H_in, W_in), where a map-resolution (H, W) mask
    drops in some channel."""
    up = F.interpolate(dropped[None, None].float(), size=tuple(shape), mode="nearest")[0, 0]
    if 0 < up.sum() < up.numel():
        ax.contour(up.cpu().numpy(), levels=[0.5], colors="red", linewidths=1.0)


def draw_masks(images: torch.Tensor, cam: torch.Tensor, camdrop: torch.Tensor,
               dropblock: Optional[torch.Tensor] = None, *, path: Optional[PathArg] = None,
               row_labels: Optional[Sequence[str]] = None, dpi: int = 80) -> Any:
    """Draw one row per sample: the input, the CAM, CamDrop's dropped mask summed over channels and
    (if given) DropBlock's; returns the matplotlib Figure (saved to ``path`` if given).

    ``images`` (N, 1 or 3, H_in, W_in) or (N, H_in, W_in); ``cam`` (N, H, W) at the feature map's
    resolution; ``camdrop``/``dropblock`` bool masks (N, C, H, W). A mask is shown as the share of
    channels dropped at each pixel, each panel on its own colour scale; its title gives the share of
    the whole sample dropped. A cross marks the CAM's peak on every map panel (CamDrop's blocks
    should sit on it, DropBlock's fall anywhere), and a red line outlines CamDrop's dropped region
    on the input."""
    Figure = _figure_class()
    n = images.shape[0]
    if cam.shape[0] != n or camdrop.shape[0] != n or (dropblock is not None and dropblock.shape[0] != n):
        raise ValueError("images, cam and the masks must hold the same number of samples")
    masks = [("CamDrop", camdrop)] + ([("DropBlock", dropblock)] if dropblock is not None else [])
    figure = Figure(figsize=(2.0 * (2 + len(masks)), 2.0 * n + 0.4), dpi=dpi)
    axes = figure.subplots(n, 2 + len(masks), squeeze=False)
    for i in range(n):
        row, col = _peak(cam[i])
        picture = _as_image(images[i])
        ax = axes[i][0]
        ax.imshow(picture, cmap="gray", interpolation="nearest")
        _outline(ax, camdrop[i].any(0), picture.shape[:2])
        ax.set_title("input (red: CamDrop's region)" if i == 0 else "", fontsize=7)
        if row_labels is not None:
            ax.set_ylabel(row_labels[i], fontsize=8)
        ax = axes[i][1]
        ax.imshow(cam[i].detach().float().cpu().numpy(), cmap="magma", interpolation="nearest")
        _mark_peak(ax, row, col)
        ax.set_title("CAM (x: its peak)" if i == 0 else "", fontsize=7)
        for j, (name, mask) in enumerate(masks, 2):
            ax = axes[i][j]
            share = 100 * mask[i].float().mean().item()
            ax.imshow(mask[i].float().mean(0).cpu().numpy(), cmap="viridis", interpolation="nearest", vmin=0.0)
            _mark_peak(ax, row, col)
            head = f"{name}: share of channels\ndropped per pixel; " if i == 0 else f"{name}: "
            ax.set_title(f"{head}{share:.1f}% of sample", fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure


def camdrop_figure(images: torch.Tensor, x: torch.Tensor, cam: torch.Tensor, alpha: torch.Tensor, *,
                   drop_prob: float = 0.1, block_size: int = 7, dropblock_prob: Optional[float] = None,
                   seed: int = 0, path: Optional[PathArg] = None, row_labels: Optional[Sequence[str]] = None,
                   dpi: int = 80, **camdrop_options: Any) -> Any:
    """Compute CamDrop's mask on the feature map ``x`` (N, C, H, W) guided by ``cam`` and ``alpha``
    (the arguments of :func:`camdrop_kernels.camdrop`; ``camdrop_options`` are its keywords) and a
    DropBlock mask at ``dropblock_prob`` (default ``drop_prob``) with the same block size (clamped
    to the map, and made odd as torchvision requires), both from ``seed``, and draw them beside the
    input ``images`` with :func:`draw_masks`. Returns the matplotlib Figure::

        alpha = ck.channel_importance(model.fc.weight, labels, features.shape[1])
        cam = ck.class_activation_map(features, alpha)
        camdrop_figure(images, features, cam, alpha, drop_prob=0.1, block_size=3, path="masks.png")
    """
    _figure_class()  # fail before any work if matplotlib is missing
    camdrop = camdrop_mask(x, cam, alpha, drop_prob, block_size, seed=seed, **camdrop_options)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    p = drop_prob if dropblock_prob is None else dropblock_prob
    size = min(block_size, x.shape[-1], x.shape[-2])
    dropblock = dropblock_mask(x, p, size if size % 2 else size - 1, generator=generator)
    return draw_masks(images, cam, camdrop, dropblock, path=path, row_labels=row_labels, dpi=dpi)
