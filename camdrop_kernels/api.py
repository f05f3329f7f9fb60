"""The public functions: ``camdrop`` (2-D), ``camdrop1d``, ``camdrop3d`` and their ``_mask`` forms.

One call: the arguments checked -> ``Options`` (cached) -> the op (``ops.forward``), which
the dispatcher sends to x's device. Tensor-like arguments that override torch functions (FX
proxies, ``__torch_function__`` subclasses) get the call handed to them, as ``torch.nn.functional``
does, so ``torch.fx.symbolic_trace`` records one node per call.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import backends, ops, state, validation
from .options import Options
from .philox import make_seed, rate_tensor

Top = Optional[Union[int, float]]


def camdrop(x: Tensor, cam: Tensor, alpha: Tensor, drop_prob: float = 0.1, block_size: int = 7, *,
            top_pixels: Top = None, top_channels: Top = None, block_shape: str = "square", normalize: str = "batch",
            gamma_mode: str = "eligible", gamma_scale: float = 1.0, seed: Optional[int] = None,
            generator: Optional[torch.Generator] = None, training: bool = True, inplace: bool = False,
            backend: str = "auto") -> Tensor:
    """CamDrop (SPEC.md) on 2-D maps: drop blocks around the top-CAM pixels of the top-alpha
    channels, then rescale.

    x is (N, C, H, W); cam is (N, H, W) (or with a channel axis of size 1) at x's resolution;
    alpha is (N, C). ``drop_prob`` is the share of each sample to drop (``gamma_mode="eligible"``,
    the default; it saturates when the guided region holds less) or DropBlock's rate
    (``"dropblock"``, the authors'). Returns x itself when not training, at drop_prob 0, or for
    an empty x. The same integer ``seed`` gives the same mask on every backend and device.
    Gradients flow to x only (cam and alpha are constants).
    """
    return _camdrop(camdrop, 2, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape,
                    normalize, gamma_mode, gamma_scale, seed, generator, training, inplace, backend)


def camdrop1d(x: Tensor, cam: Tensor, alpha: Tensor, drop_prob: float = 0.1, block_size: int = 7, *,
              top_pixels: Top = None, top_channels: Top = None, block_shape: str = "square",
              normalize: str = "batch", gamma_mode: str = "eligible", gamma_scale: float = 1.0,
              seed: Optional[int] = None, generator: Optional[torch.Generator] = None, training: bool = True,
              inplace: bool = False, backend: str = "auto") -> Tensor:
    """CamDrop on 1-D maps (sequences, audio, time series): x (N, C, L), cam (N, L). See :func:`camdrop`."""
    return _camdrop(camdrop1d, 1, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape,
                    normalize, gamma_mode, gamma_scale, seed, generator, training, inplace, backend)


def camdrop3d(x: Tensor, cam: Tensor, alpha: Tensor, drop_prob: float = 0.1, block_size: int = 7, *,
              top_pixels: Top = None, top_channels: Top = None, block_shape: str = "square",
              normalize: str = "batch", gamma_mode: str = "eligible", gamma_scale: float = 1.0,
              seed: Optional[int] = None, generator: Optional[torch.Generator] = None, training: bool = True,
              inplace: bool = False, backend: str = "auto") -> Tensor:
    """CamDrop on 3-D maps (video, volumes): x (N, C, D, H, W), cam (N, D, H, W). See :func:`camdrop`."""
    return _camdrop(camdrop3d, 3, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape,
                    normalize, gamma_mode, gamma_scale, seed, generator, training, inplace, backend)


def camdrop_mask(x: Tensor, cam: Tensor, alpha: Tensor, drop_prob: float = 0.1, block_size: int = 7, *,
                 top_pixels: Top = None, top_channels: Top = None, block_shape: str = "square",
                 normalize: str = "batch", gamma_mode: str = "eligible", gamma_scale: float = 1.0,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                 backend: str = "auto") -> Tensor:
    """Bool tensor shaped like x, True where :func:`camdrop` with the same arguments drops (for
    plots, statistics and tests)."""
    return _mask(2, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize,
                 gamma_mode, gamma_scale, seed, generator, backend)


def camdrop1d_mask(x: Tensor, cam: Tensor, alpha: Tensor, drop_prob: float = 0.1, block_size: int = 7, *,
                   top_pixels: Top = None, top_channels: Top = None, block_shape: str = "square",
                   normalize: str = "batch", gamma_mode: str = "eligible", gamma_scale: float = 1.0,
                   seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   backend: str = "auto") -> Tensor:
    """Bool tensor shaped like x, True where :func:`camdrop1d` with the same arguments drops."""
    return _mask(1, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize,
                 gamma_mode, gamma_scale, seed, generator, backend)


def camdrop3d_mask(x: Tensor, cam: Tensor, alpha: Tensor, drop_prob: float = 0.1, block_size: int = 7, *,
                   top_pixels: Top = None, top_channels: Top = None, block_shape: str = "square",
                   normalize: str = "batch", gamma_mode: str = "eligible", gamma_scale: float = 1.0,
                   seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
                   backend: str = "auto") -> Tensor:
    """Bool tensor shaped like x, True where :func:`camdrop3d` with the same arguments drops."""
    return _mask(3, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize,
                 gamma_mode, gamma_scale, seed, generator, backend)


# ---------------------------------------------------------------------------------------------
# The one path behind them (and behind the layers: ``run``)
# ---------------------------------------------------------------------------------------------
def run(x: Tensor, cam: Tensor, alpha: Tensor, opts: Options, drop_prob: Tensor, seed: Tensor, inplace: bool,
        backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(y, dropped counts, seed rates) for checked inputs (cam (N, *S)); what the layers call.

    ``backend`` is a public name; other than "auto" it applies in eager mode (under
    torch.compile the device's default backend runs)."""
    if backend == "auto" or torch.compiler.is_compiling():
        return ops.forward(x, cam, alpha, seed, drop_prob, opts, inplace)
    with backends.using(backends.public_to_internal(backend, x.device.type)):
        return ops.forward(x, cam, alpha, seed, drop_prob, opts, inplace)


def _checked(rank, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize,
             gamma_mode, gamma_scale, seed, generator, backend):
    """Validate one call: (cam as (N, *S), options, drop_prob as a float, seed, generator)."""
    opts = Options.get(rank, block_size, top_pixels, top_channels, block_shape, normalize, gamma_mode, gamma_scale)
    p = validation.check_probability("drop_prob", drop_prob)
    cam = validation.check_inputs(rank, x, cam, alpha)
    validation.check_not_transformed(x)
    seed = validation.check_seed(seed)
    generator = validation.check_generator(generator, x.device)
    validation.check_choice("backend", backend, validation.PUBLIC_BACKENDS)
    return cam, opts, p, seed, generator


def _rate(p: float) -> Tensor:
    """drop_prob as a float64 tensor (a cached CPU one in plain eager mode; made anew under
    torch.compile or a dispatch mode such as FakeTensorMode, which must see it created)."""
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack():
        return torch.tensor([p], dtype=torch.float64)  # (shape (1,): a 0-d one makes dynamo restart its analysis)
    return rate_tensor(p)


def _camdrop(public, rank, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize,
             gamma_mode, gamma_scale, seed, generator, training, inplace, backend) -> Tensor:
    if has_torch_function_variadic(x, cam, alpha):  # (torch.fx proxies, tensor subclasses: one call of ``public``)
        return handle_torch_function(
            public, (x, cam, alpha), x, cam, alpha, drop_prob, block_size, top_pixels=top_pixels,
            top_channels=top_channels, block_shape=block_shape, normalize=normalize, gamma_mode=gamma_mode,
            gamma_scale=gamma_scale, seed=seed, generator=generator, training=training, inplace=inplace,
            backend=backend)
    cam, opts, p, seed, generator = _checked(rank, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels,
                                             block_shape, normalize, gamma_mode, gamma_scale, seed, generator,
                                             backend)
    training = validation.check_bool("training", training)
    inplace = validation.check_bool("inplace", inplace)
    if not training or p == 0.0 or x.numel() == 0:
        return x
    if inplace:
        validation.check_inplace(x)
    return run(x, cam, alpha, opts, _rate(p), make_seed(seed, generator, x), inplace, backend)[0]


def _mask(rank, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize,
          gamma_mode, gamma_scale, seed, generator, backend) -> Tensor:
    cam, opts, p, seed, generator = _checked(rank, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels,
                                             block_shape, normalize, gamma_mode, gamma_scale, seed, generator,
                                             backend)
    if p == 0.0 or x.numel() == 0:
        return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    seed_t = make_seed(seed, generator, x)
    with torch.no_grad(), backends.using(backends.public_to_internal(backend, x.device.type)):
        out = ops.build_state(x, cam, alpha, seed_t, _rate(p), opts)
    return state.dense_mask(out[0], out[1], tuple(x.shape[2:]))
