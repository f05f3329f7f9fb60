"""The public functions: ``camdrop`` (2-D), ``camdrop1d``, ``camdrop3d`` and their ``_mask`` forms.

One call: check the arguments -> ``Options`` (cached) -> the state op -> the apply op (through
the one autograd Function). The keyword signature is written once, in the factories below.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from . import backends, ops, state, validation
from .options import Options
from .philox import make_seed, rate_tensor

Top = Optional[Union[int, float]]


def run(x: Tensor, cam: Tensor, alpha: Tensor, opts: Options, drop_prob: Tensor, seed: Tensor, inplace: bool,
        backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(y, dropped counts, seed rates) for validated inputs; what the modules call too.

    ``backend`` is a public name; other than "auto" it applies in eager mode (under
    torch.compile the device's default backend runs: the choice is made when the kernel runs).
    """
    if backend == "auto" or torch.compiler.is_compiling():
        return ops.forward(x, cam, alpha, seed, drop_prob, opts, inplace)
    with backends.using(backends.public_to_internal(backend, x.device.type)):
        return ops.forward(x, cam, alpha, seed, drop_prob, opts, inplace)


def _prepare(rank, x, cam, alpha, drop_prob, block_size, top_pixels, top_channels, block_shape, normalize,
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


def _functional(rank: int, name: str, doc: str) -> Callable[..., Tensor]:
    def camdrop(
        x: Tensor,
        cam: Tensor,
        alpha: Tensor,
        drop_prob: float = 0.1,
        block_size: int = 7,
        *,
        top_pixels: Top = None,
        top_channels: Top = None,
        block_shape: str = "square",
        normalize: str = "batch",
        gamma_mode: str = "eligible",
        gamma_scale: float = 1.0,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        training: bool = True,
        inplace: bool = False,
        backend: str = "auto",
    ) -> Tensor:
        cam, opts, p, seed, generator = _prepare(rank, x, cam, alpha, drop_prob, block_size, top_pixels,
                                                 top_channels, block_shape, normalize, gamma_mode, gamma_scale,
                                                 seed, generator, backend)
        validation.check_bool("training", training)
        validation.check_bool("inplace", inplace)
        if not training or p == 0.0 or x.numel() == 0:
            return x
        if inplace:
            validation.check_inplace(x)
        return run(x, cam, alpha, opts, _rate(p), make_seed(seed, generator, x), inplace, backend)[0]

    camdrop.__name__ = camdrop.__qualname__ = name
    camdrop.__doc__ = doc
    return camdrop


def _mask(rank: int, name: str, doc: str) -> Callable[..., Tensor]:
    def camdrop_mask(
        x: Tensor,
        cam: Tensor,
        alpha: Tensor,
        drop_prob: float = 0.1,
        block_size: int = 7,
        *,
        top_pixels: Top = None,
        top_channels: Top = None,
        block_shape: str = "square",
        normalize: str = "batch",
        gamma_mode: str = "eligible",
        gamma_scale: float = 1.0,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        backend: str = "auto",
    ) -> Tensor:
        cam, opts, p, seed, generator = _prepare(rank, x, cam, alpha, drop_prob, block_size, top_pixels,
                                                 top_channels, block_shape, normalize, gamma_mode, gamma_scale,
                                                 seed, generator, backend)
        if p == 0.0 or x.numel() == 0:
            return torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        seed_t = make_seed(seed, generator, x)
        with torch.no_grad(), backends.using(backends.public_to_internal(backend, x.device.type)):
            slots, bits = ops.build_state(x, cam.detach(), alpha.detach(), seed_t, _rate(p), opts)[:2]
        return state.dense_mask(slots, bits, tuple(x.shape[2:]))

    camdrop_mask.__name__ = camdrop_mask.__qualname__ = name
    camdrop_mask.__doc__ = doc
    return camdrop_mask


_DOC = """CamDrop (SPEC.md) on {what}: drop blocks around the top-CAM pixels of the top-alpha channels,
    then rescale.

    x is {x}; cam is {cam} (or with a channel axis of size 1) at x's resolution; alpha is
    (N, C). ``drop_prob`` is the share of each sample to drop (``gamma_mode="eligible"``,
    the default; it saturates when the guided region holds less) or DropBlock's rate
    (``"dropblock"``, the authors'). Returns x itself when not training, at drop_prob 0,
    or for an empty x. The same integer ``seed`` gives the same mask on every backend and
    device. Gradients flow to x only (cam and alpha are constants).
    """
_MASK_DOC = """Bool tensor shaped like x, True where :func:`{fn}` with the same arguments drops (for plots,
    statistics and tests)."""

camdrop = _functional(2, "camdrop", _DOC.format(what="2-D maps", x="(N, C, H, W)", cam="(N, H, W)"))
camdrop1d = _functional(1, "camdrop1d", _DOC.format(what="1-D maps (sequences, audio, time series)",
                                                    x="(N, C, L)", cam="(N, L)"))
camdrop3d = _functional(3, "camdrop3d", _DOC.format(what="3-D maps (video, volumes)", x="(N, C, D, H, W)",
                                                    cam="(N, D, H, W)"))
camdrop_mask = _mask(2, "camdrop_mask", _MASK_DOC.format(fn="camdrop"))
camdrop1d_mask = _mask(1, "camdrop1d_mask", _MASK_DOC.format(fn="camdrop1d"))
camdrop3d_mask = _mask(3, "camdrop3d_mask", _MASK_DOC.format(fn="camdrop3d"))
