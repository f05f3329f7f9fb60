"""The "native" backend: SPEC.md on CPU tensors in C (``csrc/camdrop_cpu.c``), the default there.

Tensors reach the C code as DLPack capsules, from which it reads and checks shapes, strides,
dtypes and devices itself; its loops run on torch's OpenMP pool with torch's thread count.
"""
from __future__ import annotations

import torch
from torch.utils.dlpack import to_dlpack as _dl

from . import _native
from .options import Options

_NORMALIZE = {"batch": 0, "sample": 1, "none": 2}
# The C code checks every tensor it is handed (dtype, shape, device, strides, index values).
CHECKS_INPUTS = True


_PARAMETERS: dict = {}


def _parameters(x, opts: Options) -> tuple:
    """The C call's scalar arguments (cached per options and shape: a training loop repeats a few)."""
    key = (opts, x.shape)
    params = _PARAMETERS.get(key)
    if params is None:
        geo = opts.geometry(x.shape[1], x.shape[2:])
        params = (opts.block_size, opts.block_shape == "diamond", geo.top_pixels, geo.top_channels,
                  opts.gamma_mode == "eligible", opts.gamma_scale, _NORMALIZE[opts.normalize])
        if len(_PARAMETERS) > 1024:
            _PARAMETERS.clear()
        _PARAMETERS[key] = params
    return params + (min(torch.get_num_threads(), 4096),)


def build_state(x, cam, alpha, seed, drop_prob, opts: Options, out) -> None:
    """Steps 1-7 into ``out`` = (slots, bits, scale, dropped, rate)."""
    _native.build(_dl(cam.contiguous()), _dl(alpha.contiguous()), _dl(seed), _dl(drop_prob),
                  *[_dl(t) for t in out], *_parameters(x, opts))


def forward(x, cam, alpha, seed, drop_prob, opts: Options, y, out) -> None:
    """Steps 1-8 in one call (one parallel region in C): the state into ``out``, then y."""
    slots, bits, scale, dropped, rate = out
    _native.forward(_dl(x), _dl(y), _dl(cam.contiguous()), _dl(alpha.contiguous()), _dl(seed), _dl(drop_prob),
                    _dl(slots), _dl(bits), _dl(scale), _dl(dropped), _dl(rate), *_parameters(x, opts))


def apply(x, y, slots, bits, scale) -> None:
    """Step 8: y = +0.0 where dropped, else x * scale (y may be x)."""
    _native.apply(_dl(x), _dl(y), _dl(slots), _dl(bits), _dl(scale), torch.get_num_threads())
