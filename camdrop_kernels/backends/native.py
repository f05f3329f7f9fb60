"""The "native" backend: SPEC.md on CPU tensors in C (``csrc/``), the default there.

Tensors reach the C code as DLPack capsules, from which it reads and checks shapes, strides,
dtypes, devices, alignment and index values itself; its loops run on torch's OpenMP pool with
torch's thread count.
"""
from __future__ import annotations

import importlib.util

import torch
from torch.utils.dlpack import to_dlpack as _dl

from ..options import NORMALIZE_CODES, Options
from .base import Backend


def available() -> bool:
    """True when the C extension is built."""
    return importlib.util.find_spec("camdrop_kernels._native") is not None


class NativeBackend(Backend):
    name = "native"

    def __init__(self) -> None:
        from .. import _native  # (imported when first used: the extension is optional)

        self._c = _native
        self._parameters: dict = {}

    def _scalars(self, x, opts: Options) -> tuple:
        """The C call's scalar arguments (cached per options and shape: a training loop repeats a few)."""
        key = (opts, x.shape)
        params = self._parameters.get(key)
        if params is None:
            geo = opts.geometry(x.shape[1], x.shape[2:])
            params = (opts.block_size, opts.block_shape == "diamond", geo.top_pixels, geo.top_channels,
                      opts.gamma_mode == "eligible", opts.gamma_scale, NORMALIZE_CODES[opts.normalize])
            if len(self._parameters) > 1024:
                self._parameters.clear()
            self._parameters[key] = params
        return params + (min(torch.get_num_threads(), 4096),)

    def build_state(self, x, cam, alpha, seed, drop_prob, opts, out) -> None:
        self._c.build(_dl(cam.contiguous()), _dl(alpha.contiguous()), _dl(seed), _dl(drop_prob),
                      *[_dl(t) for t in out], *self._scalars(x, opts))

    def forward(self, x, cam, alpha, seed, drop_prob, opts, y, out) -> None:
        # One C call and one parallel region: the state into out, a barrier, then y.
        slots, bits, scale, dropped, rate = out
        self._c.forward(_dl(x), _dl(y), _dl(cam.contiguous()), _dl(alpha.contiguous()), _dl(seed), _dl(drop_prob),
                        _dl(slots), _dl(bits), _dl(scale), _dl(dropped), _dl(rate), *self._scalars(x, opts))

    def apply(self, x, y, slots, bits, scale) -> None:
        self._c.apply(_dl(x), _dl(y), _dl(slots), _dl(bits), _dl(scale), torch.get_num_threads())
