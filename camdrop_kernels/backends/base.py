"""The backend contract: what every implementation of SPEC.md provides.

The registered ops (``ops.py``) hand a backend tensors they have checked (dtypes, shapes,
devices, strides, alignment, no zero/negative-bit tensors) and outputs they allocated
(``state.allocate``): a backend fills them and never allocates the saved state itself.
"""
from __future__ import annotations

from torch import Tensor

from ..options import Options
from ..state import State


class Backend:
    """One implementation of SPEC.md: ``build_state`` (steps 1-7), ``apply`` (step 8), ``forward``
    (both; backends override it where one call does both, e.g. one OpenMP region)."""

    name = "?"

    def build_state(self, x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: Tensor, opts: Options,
                    out: State) -> None:
        """Fill every tensor of ``out`` (``state.allocate(x, opts)``) for x: SPEC.md steps 1-7."""
        raise NotImplementedError

    def apply(self, x: Tensor, y: Tensor, slots: Tensor, bits: Tensor, scale: Tensor) -> None:
        """y = +0.0 where dropped, else x * scale rounded once to x's dtype (y may be x): step 8."""
        raise NotImplementedError

    def forward(self, x: Tensor, cam: Tensor, alpha: Tensor, seed: Tensor, drop_prob: Tensor, opts: Options,
                y: Tensor, out: State) -> None:
        """Steps 1-8: ``out`` as in build_state, then y."""
        self.build_state(x, cam, alpha, seed, drop_prob, opts, out)
        self.apply(x, y, out[0], out[1], out[2])

    def __repr__(self) -> str:
        return f"<camdrop_kernels backend {self.name!r}>"
