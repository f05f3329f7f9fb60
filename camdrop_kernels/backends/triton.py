"""The "triton" backend: the fused Triton kernels of ``camdrop_kernels.triton_backend`` for CUDA
tensors (and for CPU tensors in Triton's interpreter, ``TRITON_INTERPRET=1``)."""
from __future__ import annotations

import importlib.util
import os

from .base import Backend


def available() -> bool:
    """True when the triton package is installed (kernels compile lazily, on first use)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as absent
        return False


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


class TritonBackend(Backend):
    name = "triton"

    def __init__(self) -> None:
        from .. import triton_backend as kernels  # (imports triton: only when first used)

        self.build_state = kernels.build_state
        self.apply = kernels.apply
        self.forward = kernels.forward
