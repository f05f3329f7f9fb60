"""Backend registry: which implementation runs a call, and whether Triton can be used."""
from __future__ import annotations

import importlib
import importlib.util
import os
import warnings
from types import ModuleType

import torch

_warned_fallback = False


def triton_available() -> bool:
    """True when the triton package is installed (kernels are compiled lazily, on first use)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as absent
        return False


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(backend: str, x: torch.Tensor) -> str:
    """Concrete backend name for ``backend`` ("auto", "torch" or "triton") and x's device."""
    global _warned_fallback
    if backend == "torch":
        return "torch"
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("backend='triton' needs the triton package: pip install triton")
        if x.device.type != "cuda" and not triton_interpreting():
            raise ValueError(
                f"backend='triton' runs on CUDA tensors (x is on {x.device}); on the CPU it needs "
                "TRITON_INTERPRET=1 set before camdrop_kernels is imported"
            )
        return "triton"
    # auto
    if x.device.type == "cuda":
        if triton_available():
            return "triton"
        if not _warned_fallback:
            warnings.warn("camdrop_kernels: triton is not installed; CUDA tensors use the slower "
                          "'torch' backend, which synchronises with the host", RuntimeWarning)
            _warned_fallback = True
    return "torch"


def module(name: str) -> ModuleType:
    """The module implementing backend ``name`` (forward, backward, dense_mask, mask_spec)."""
    if name == "torch":
        return importlib.import_module("camdrop_kernels.torch_backend")
    if name == "triton":
        return importlib.import_module("camdrop_kernels.triton_backend")
    raise ValueError(f"unknown backend {name!r}")

