"""Cached launch plans and direct launches of compiled Triton kernels.

A ``Plan`` is everything about a launch that depends only on its cache key (shapes, strides,
dtypes, options, device): the kernel, the grid, the constexprs, the warps. Per call only the
tensors and a few per-call scalars change. The first launch of a plan on a device goes through
``kernel[grid](...)`` (Triton compiles and specialises there) and keeps the ``CompiledKernel``
it returns; later launches call its launcher directly with the same argument list (every
parameter in order, constexprs included, as ``JITFunction.run`` passes them in Triton 3.6
to 3.8), skipping Triton's per-call argument binding and specialisation. The cache keys hold
everything that specialisation looks at (integer values come from the keyed shapes and
strides; pointer alignment is keyed or switched off per parameter; per-call integers are
``do_not_specialize``), so the kept kernel is the one ``kernel[grid]`` would pick.

When Triton runs a launch hook (a profiler), or in the interpreter, every launch goes through
``kernel[grid]``. ``HOOK``, when set, is called instead of launching (the report's stubbed
launches and launch counts).
"""
from __future__ import annotations

import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import torch

# Triton runs kernels in its CPU interpreter (read once, as Triton itself does at import).
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
# Called as HOOK(plan, args) instead of launching, when set (see report.py).
HOOK: Optional[Callable[["Plan", tuple], None]] = None

try:  # Triton >= 3.4 keeps its runtime switches in knobs
    from triton import knobs as _knobs

    def _hook_set(hook) -> bool:
        """A launch hook that would run: Triton 3.6+ keeps a HookChain there, never None, with an
        empty ``calls`` list when nothing is hooked (reading "is not None" sent every launch the
        slow way: measured on an H200, 87 us of host time per state launch)."""
        if hook is None:
            return False
        calls = getattr(hook, "calls", None)
        return calls is None or len(calls) > 0

    def _launch_hooked() -> bool:
        """Launch through kernel[grid]: a launch hook is set, or a switch that changes which
        kernel Triton would pick (debug, instrumentation) is on, which the kept kernel ignores."""
        runtime = _knobs.runtime
        return (_hook_set(runtime.launch_enter_hook) or _hook_set(runtime.launch_exit_hook)
                or bool(runtime.debug) or bool(_knobs.compilation.instrumentation_mode))
except ImportError:  # pragma: no cover - older Triton
    def _launch_hooked() -> bool:
        return True

_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
_get_device = getattr(torch._C, "_cuda_getDevice", None)


class Plan:
    """One kernel specialisation ready to launch: ``plan.launch(per_call + plan.static, device_index)``.

    Arguments are given by name and checked against the kernel's signature once, here: the
    kernel's parameters must be ``per_call`` (the names of what changes between calls: tensors,
    the seed and rate halves, in this order), then the keys of ``static`` (the values fixed by the
    cache key, in any order: they are put in the kernel's order here), then the keys of
    ``constexprs``. A launch then passes one tuple positionally, as Triton's launcher wants it,
    with nothing ordered by hand."""

    __slots__ = ("name", "fn", "grid", "per_call", "constexprs", "cvalues", "static", "static_named", "num_warps",
                 "num_stages", "maxnreg", "compiled", "info", "then")

    def __init__(self, name: str, fn, grid: Tuple[int, int, int], per_call: Sequence[str], static: Dict[str, object],
                 constexprs: Dict[str, object], num_warps: int, num_stages: int = 1, maxnreg: Optional[int] = None,
                 info: Optional[dict] = None):
        names = list(fn.arg_names)
        k, m = len(per_call), len(per_call) + len(static)
        if names[:k] != list(per_call):
            raise ValueError(f"{name}: {fn.__name__} does not start with the per-call parameters {list(per_call)}")
        if set(names[k:m]) != set(static):
            raise ValueError(f"{name}: static arguments {sorted(set(static) ^ set(names[k:m]))} do not match "
                             f"{fn.__name__}'s parameters")
        if set(names[m:]) != set(constexprs):
            raise ValueError(f"{name}: constexprs {sorted(set(constexprs) ^ set(names[m:]))} do not match "
                             f"{fn.__name__}'s last parameters")
        self.name = name
        self.fn = fn
        self.grid = grid
        self.per_call = tuple(per_call)
        self.constexprs = constexprs
        self.cvalues = tuple(constexprs[n] for n in names[m:])
        self.static_named = dict(static)
        self.static = tuple(static[n] for n in names[k:m])  # in the kernel's order, after the per-call ones
        self.num_warps = num_warps
        self.num_stages = num_stages
        self.maxnreg = maxnreg  # a register budget per thread for ptxas (None: its own choice)
        self.compiled: Dict[int, object] = {}
        self.info = info or {}
        self.then = 0  # what a caller launches after this one (the state plan's THEN_* codes in plan.py)

    def launch(self, args: tuple, device_index: int) -> None:
        """Launch on the current stream of ``device_index`` (ignored in the interpreter)."""
        if HOOK is not None:
            HOOK(self, args)
            return
        kernel = self.compiled.get(device_index)
        if kernel is None or _launch_hooked():
            self._launch_through_triton(args, device_index)
            return
        g0, g1, g2 = self.grid
        if _get_device() != device_index:  # the kernel's handle lives in that device's context
            with torch.cuda.device(device_index):
                kernel.run(g0, g1, g2, _stream(device_index), kernel.function, kernel.packed_metadata, None, None,
                           None, *args, *self.cvalues)
            return
        kernel.run(g0, g1, g2, _stream(device_index), kernel.function, kernel.packed_metadata, None, None, None,
                   *args, *self.cvalues)

    def options(self) -> dict:
        """The compile options of this launch (what ``kernel[grid]`` and ``triton.compile`` take)."""
        opts = dict(num_warps=self.num_warps, num_stages=self.num_stages)
        if self.maxnreg is not None:
            opts["maxnreg"] = self.maxnreg
        return opts

    def _launch_through_triton(self, args: tuple, device_index: int) -> None:
        if INTERPRET or device_index < 0:
            self.fn[self.grid](*args, **self.constexprs, **self.options())
            return
        hooked = _launch_hooked()
        with torch.cuda.device(device_index):
            kernel = self.fn[self.grid](*args, **self.constexprs, **self.options())
        # Keep only a kernel compiled with every switch off (a debug or instrumented build must not
        # serve the direct launches that follow once the switch is off again).
        if kernel is not None and hasattr(kernel, "packed_metadata") and not hooked:
            self.compiled[device_index] = kernel


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2(n: int) -> int:
    """The smallest power of two >= n (>= 1)."""
    return 1 << max(0, int(n) - 1).bit_length()


def magic(d: int) -> Tuple[int, int]:
    """(m, s) with x // d == (x * m) >> s for every int32 0 <= x < 2**31 (x * m < 2**63).

    Granlund-Montgomery with 31-bit dividends: l = ceil(log2 d), m = floor(2**(31+l) / d) + 1
    (at most 2**32), s = 31 + l."""
    d = max(int(d), 1)
    l = (d - 1).bit_length()
    return (1 << (31 + l)) // d + 1, 31 + l
