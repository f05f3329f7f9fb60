"""The registry of backends: which implementation serves which device, and the run-time
override that the public ``backend=`` argument (and the tests) use.

| name       | devices                 | module             | available when            |
| ---------- | ----------------------- | ------------------ | ------------------------- |
| "native"   | cpu                     | backends.native    | the C extension is built  |
| "plain"    | any                     | backends.plain     | always (plain torch ops)  |
| "triton"   | cuda (cpu: interpreter) | backends.triton    | triton is installed       |

Defaults: cpu -> native, else plain; cuda -> triton, else plain (warned once). The public
``backend="torch"`` means "the CPU path" (native when built) on the CPU and plain torch on CUDA.
The registered op kernels call :func:`select` once per call, for their own device type.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Dict, Iterator, Optional

from .. import cpp
from . import native, plain, triton
from .base import Backend

__all__ = ["Backend", "select", "using", "public_to_internal", "available", "NAMES", "native_available",
           "triton_available", "triton_interpreting"]

native_available = native.available
triton_available = triton.available
triton_interpreting = triton.interpreting

NAMES = ("native", "plain", "triton")
DEFAULTS = {"cpu": ("native", "plain"), "cuda": ("triton", "plain")}
_FACTORIES = {"native": native.NativeBackend, "plain": plain.PlainBackend, "triton": triton.TritonBackend}
_AVAILABLE = {"native": native.available, "plain": lambda: True, "triton": triton.available}

_local = threading.local()
_instances: Dict[str, Backend] = {}
_defaults: Dict[str, Backend] = {}
_warned = False


def available(name: str) -> bool:
    return _AVAILABLE[name]()


def serves(name: str, device_type: str) -> bool:
    if name == "native":
        return device_type == "cpu"
    if name == "triton":
        return device_type == "cuda" or (device_type == "cpu" and triton.interpreting())
    return True


def instance(name: str) -> Backend:
    """The backend object ``name`` (made once)."""
    backend = _instances.get(name)
    if backend is None:
        if not available(name):
            raise RuntimeError(f"backend {name!r} is not available here"
                               + (": pip install triton" if name == "triton" else ": the C extension is not built"))
        backend = _instances[name] = _FACTORIES[name]()
    return backend


def select(device_type: str) -> Backend:
    """The backend that runs on ``device_type`` now: the thread's override, else the default."""
    override = getattr(_local, "override", None)
    if override is None:
        backend = _defaults.get(device_type)
        return backend if backend is not None else _default(device_type)
    if not serves(override, device_type):
        raise ValueError(f"backend {override!r} does not run on {device_type} tensors"
                         + ("; on the CPU it needs TRITON_INTERPRET=1 set before triton is imported"
                            if override == "triton" else ""))
    return instance(override)


def _default(device_type: str) -> Backend:
    global _warned
    for name in DEFAULTS.get(device_type, ("plain",)):
        if available(name) and serves(name, device_type):
            backend = _defaults[device_type] = instance(name)
            break
    if device_type == "cuda" and backend.name == "plain" and not _warned:
        warnings.warn("camdrop_kernels: triton is not installed; CUDA tensors use the slower 'plain' torch backend, "
                      "which synchronises with the host", RuntimeWarning)
        _warned = True
    return backend


def public_to_internal(backend: str, device_type: str) -> Optional[str]:
    """The registry name a public ``backend=`` value asks for on this device (None: the defaults)."""
    if backend == "auto":
        return None
    if backend == "torch":
        return "native" if device_type == "cpu" and available("native") else "plain"
    return backend


@contextlib.contextmanager
def using(name: Optional[str]) -> Iterator[None]:
    """Run the ops inside, in this thread, on backend ``name`` (a registry name; None: the defaults)."""
    if name is not None and name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}; got {name!r}")
    saved = getattr(_local, "override", None)
    _local.override = name
    cpp_saved = cpp.set_python_kernels(name is not None)  # (the C++ CPU kernels hand overridden calls here)
    try:
        yield
    finally:
        _local.override = saved
        cpp.set_python_kernels(cpp_saved)


def current_override() -> Optional[str]:
    return getattr(_local, "override", None)
