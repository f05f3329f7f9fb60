"""Argument checks for the public API: every bad input fails here, at once, by name.

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind,
wrong value) with the argument's name and what was expected.
"""
from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Optional

import torch

from .config import BLOCK_SHAPES, GAMMA_MODES, NORMALIZE_MODES, CamDropConfig
from .philox import SEED_LIMIT

BACKENDS = ("auto", "torch", "triton")


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_floating_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor; got dtype {value.dtype}")
    return value


def check_inputs(x, cam, alpha) -> torch.Tensor:
    """Check x, cam and alpha against each other; return cam as an (N, H, W) view."""
    check_floating_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W); got shape {tuple(x.shape)}")
    check_floating_tensor("cam", cam)
    check_floating_tensor("alpha", alpha)
    N, C, H, W = x.shape
    if cam.dim() == 4 and cam.shape[1] == 1:
        cam = cam[:, 0]
    if cam.dim() != 3 or cam.shape[0] != N:
        raise ValueError(
            f"cam must have shape (N, H, W) or (N, 1, H, W) = ({N}, {H}, {W}) for x of shape "
            f"{tuple(x.shape)}; got {tuple(cam.shape)}"
        )
    if tuple(cam.shape[1:]) != (H, W):
        raise ValueError(
            f"cam's spatial size {tuple(cam.shape[1:])} does not match x's ({H}, {W}): resize the CAM "
            "to this layer's resolution (e.g. F.interpolate), or build it with class_activation_map(x, alpha)"
        )
    if alpha.dim() != 2 or tuple(alpha.shape) != (N, C):
        raise ValueError(f"alpha must have shape (N, C) = ({N}, {C}); got {tuple(alpha.shape)}")
    for name, t in (("cam", cam), ("alpha", alpha)):
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}: all tensors must share a device")
    return cam


def check_probability(name: str, value) -> float:
    if not _is_real(value):
        raise TypeError(f"{name} must be a real number in [0, 1]; got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1]; got {value}")
    return value


def check_block_size(value) -> int:
    if not _is_int(value):
        raise TypeError(f"block_size must be an int >= 1; got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"block_size must be an int >= 1; got {value}")
    return int(value)


def check_top(name: str, value):
    """``top_pixels``/``top_channels``: None, an int >= 1, or a float in (0, 1]."""
    if value is None:
        return None
    if _is_int(value):
        if value < 1:
            raise ValueError(f"{name} must be an int >= 1 or a float in (0, 1]; got {value}")
        return int(value)
    if isinstance(value, float):
        if not 0.0 < value <= 1.0:  # also rejects NaN
            raise ValueError(f"{name} must be an int >= 1 or a float in (0, 1]; got {value}")
        return value
    raise TypeError(f"{name} must be None, an int >= 1 or a float in (0, 1]; got {type(value).__name__}")


def check_gamma_scale(value) -> float:
    if not _is_real(value):
        raise TypeError(f"gamma_scale must be a finite real number >= 0; got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"gamma_scale must be a finite real number >= 0; got {value}")
    return value


def check_seed(value) -> Optional[int]:
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(f"seed must be None or an int in [0, 2**63); got {type(value).__name__}")
    if not 0 <= value < SEED_LIMIT:
        raise ValueError(f"seed must be in [0, 2**63); got {value}")
    return int(value)


def check_generator(value, device: torch.device) -> Optional[torch.Generator]:
    if value is None:
        return None
    if not isinstance(value, torch.Generator):
        raise TypeError(f"generator must be None or a torch.Generator; got {type(value).__name__}")
    if torch.device(value.device).type != device.type:
        raise ValueError(f"generator is on {value.device} but x is on {device}")
    return value


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool; got {type(value).__name__}")
    return value


def check_options(
    *,
    drop_prob,
    block_size,
    top_pixels,
    top_channels,
    block_shape,
    normalize,
    gamma_mode,
    gamma_scale,
    seed,
) -> dict:
    """Validate the CamDrop parameters shared by every entry point; return them normalised."""
    return dict(
        drop_prob=check_probability("drop_prob", drop_prob),
        block_size=check_block_size(block_size),
        top_pixels=check_top("top_pixels", top_pixels),
        top_channels=check_top("top_channels", top_channels),
        block_shape=check_choice("block_shape", block_shape, BLOCK_SHAPES),
        normalize=check_choice("normalize", normalize, NORMALIZE_MODES),
        gamma_mode=check_choice("gamma_mode", gamma_mode, GAMMA_MODES),
        gamma_scale=check_gamma_scale(gamma_scale),
        seed=check_seed(seed),
    )


def check_inplace(x: torch.Tensor) -> None:
    """Refuse what torch's own in-place ops refuse: a leaf that requires grad, or memory where
    several elements share one location (an expanded tensor)."""
    if x.is_leaf and x.requires_grad:
        raise RuntimeError(
            "camdrop(inplace=True) on a leaf tensor that requires grad: use inplace=False, "
            "or apply it to the output of another op"
        )
    if any(stride == 0 and size > 1 for stride, size in zip(x.stride(), x.shape)):
        raise ValueError("camdrop(inplace=True) needs x without overlapping elements (x is expanded); "
                         "use inplace=False or x.contiguous()")


def prepare_call(x, cam, alpha, *, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize,
                 gamma_mode, gamma_scale, seed, generator):
    """Validate one CamDrop call; return (cam as (N, H, W), config, seed, generator)."""
    cam = check_inputs(x, cam, alpha)
    opts = check_options(
        drop_prob=drop_prob, block_size=block_size, top_pixels=top_pixels, top_channels=top_channels,
        block_shape=block_shape, normalize=normalize, gamma_mode=gamma_mode, gamma_scale=gamma_scale, seed=seed,
    )
    generator = check_generator(generator, x.device)
    seed = opts.pop("seed")
    return cam, CamDropConfig.build(tuple(x.shape), **opts), seed, generator
