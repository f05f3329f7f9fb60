"""The C++ op kernels (``camdrop_kernels._C``, ``csrc/torch/ops.cpp``), where they load.

``_C`` registers the ops' CPU kernels and their autograd in C++ (a few microseconds of host time
a call, against tens through Python kernels). It is built against the torch in the build
environment; with another torch at run time it does not load, and the Python kernels of
``ops.py`` serve instead (the same results bit for bit), with one warning that says so.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from types import ModuleType
from typing import Optional


def _load() -> Optional[ModuleType]:
    if os.environ.get("CAMDROP_CPP_OPS", "1") == "0" or importlib.util.find_spec("camdrop_kernels._C") is None:
        return None
    try:
        from . import _C
    except (ImportError, OSError) as exc:  # (built against another torch: undefined symbols)
        warnings.warn(f"camdrop_kernels: the C++ op kernels (camdrop_kernels._C) do not load with this torch ({exc}); "
                      "using the Python kernels (the same results, more host time a call). Rebuild them against "
                      "this torch: pip install --no-build-isolation -e .", RuntimeWarning)
        return None
    return _C


C = _load()


def set_python_kernels(on: bool) -> bool:
    """Hand this thread's CPU calls to the Python kernels (a backend override); the previous setting."""
    return bool(C.set_python_kernels(on)) if C is not None else False
