"""The registry of backends: which implementation serves which device, where it lives, and
the run-time override that the public ``backend=`` argument and the tests use.

A backend module provides ``build_state(x, cam, alpha, seed, drop_prob, opts, out)`` (SPEC.md
steps 1-7, filling the ``state.allocate`` tensors ``out``) and ``apply(x, y, slots, bits,
scale)`` (step 8, y may be x). The registered ops (``ops.py``) are dispatched by device
through torch's dispatcher; each device's kernel asks ``select`` which backend runs.

| name       | devices                    | lives in                    | available when            |
| ---------- | -------------------------- | --------------------------- | ------------------------- |
| "native"   | cpu                        | camdrop_kernels.cpu_native  | the C extension is built  |
| "torch"    | any                        | camdrop_kernels.torch_ops   | always (plain torch ops)  |
| "triton"   | cuda (cpu: interpreter)    | camdrop_kernels.triton_backend | triton is installed    |

Defaults: cpu -> native, else torch; cuda -> triton, else torch (warned once). The public
``backend="torch"`` means "the CPU path" (native when built) on the CPU and plain torch on CUDA.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, Dict, Iterator, Optional, Tuple


def triton_available() -> bool:
    """True when the triton package is installed (kernels compile lazily, on first use)."""
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # a broken or blocked install counts as absent
        return False


def triton_interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def native_available() -> bool:
    """True when the native CPU extension (csrc/camdrop_cpu.c) is built."""
    return importlib.util.find_spec("camdrop_kernels._native") is not None


@dataclass(frozen=True)
class Backend:
    name: str
    devices: Tuple[str, ...]  # device types served ("*": any)
    module: str
    available: Callable[[], bool]

    def serves(self, device_type: str) -> bool:
        if self.name == "triton" and device_type == "cpu":
            return triton_interpreting()
        return "*" in self.devices or device_type in self.devices

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


REGISTRY: Dict[str, Backend] = {
    "native": Backend("native", ("cpu",), "camdrop_kernels.cpu_native", native_available),
    "torch": Backend("torch", ("*",), "camdrop_kernels.torch_ops", lambda: True),
    "triton": Backend("triton", ("cuda",), "camdrop_kernels.triton_backend", triton_available),
}
DEFAULTS = {"cpu": ("native", "torch"), "cuda": ("triton", "torch")}

_local = threading.local()
_cache: Dict[Tuple[Optional[str], str], ModuleType] = {}
_warned = False


def _enabled(name: str) -> bool:
    return name not in getattr(_local, "disabled", ())


def select(device_type: str) -> ModuleType:
    """The backend module that runs on ``device_type`` now (the override first, then the defaults)."""
    override = getattr(_local, "override", None)
    key = (override, device_type)
    module = _cache.get(key)
    if module is not None and not getattr(_local, "disabled", ()):
        return module
    if override is not None:
        backend = REGISTRY[override]
        if not backend.available():
            raise RuntimeError(f"backend {override!r} is not available here"
                               + (": pip install triton" if override == "triton" else ""))
        if not backend.serves(device_type):
            raise ValueError(
                f"backend {override!r} does not run on {device_type} tensors"
                + ("; on the CPU it needs TRITON_INTERPRET=1 set before triton is imported"
                   if override == "triton" else ""))
        module = backend.load()
    else:
        for name in DEFAULTS.get(device_type, ("torch",)):
            backend = REGISTRY[name]
            if _enabled(name) and backend.available() and backend.serves(device_type):
                module = backend.load()
                break
        _warn_fallback(device_type, module)
    if not getattr(_local, "disabled", ()):
        _cache[key] = module
    return module


def _warn_fallback(device_type: str, module: ModuleType) -> None:
    global _warned
    if device_type == "cuda" and module.__name__.endswith("torch_ops") and not _warned:
        warnings.warn("camdrop_kernels: triton is not installed; CUDA tensors use the slower 'torch' backend, "
                      "which synchronises with the host", RuntimeWarning)
        _warned = True


def public_to_internal(backend: str, device_type: str) -> Optional[str]:
    """The registry name a public ``backend=`` value asks for on this device (None: the defaults)."""
    if backend == "auto":
        return None
    if backend == "torch":
        return "native" if device_type == "cpu" and native_available() and _enabled("native") else "torch"
    return backend


@contextlib.contextmanager
def using(name: Optional[str]) -> Iterator[None]:
    """Run the ops inside with backend ``name`` (a registry name; None leaves the defaults)."""
    saved = getattr(_local, "override", None)
    _local.override = name
    try:
        yield
    finally:
        _local.override = saved


@contextlib.contextmanager
def disabled(*names: str) -> Iterator[None]:
    """Leave backends out of the defaults inside (tests: the plain-torch path where native is built)."""
    saved = getattr(_local, "disabled", ())
    _local.disabled = tuple(saved) + names
    try:
        yield
    finally:
        _local.disabled = saved
