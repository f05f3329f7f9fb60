"""Compile the Triton kernels ahead of time for CUDA targets, on a machine without a GPU, with the
specialisations the launcher really runs.

``python -m camdrop_kernels.triton_backend.compile_check --arch 90`` plans launches with the
backend's own code (``state_launch``/``apply_launch``, on CPU tensors standing in for device
ones: same dtypes, strides and pointer alignment), specialises every argument the way
``JITFunction.run`` does (integers: 1 becomes a constant, multiples of 16 are marked; pointers:
16-byte alignment marked unless switched off per parameter), and compiles each plan with
``triton.compile(..., target=GPUTarget("cuda", arch, 32))`` to PTX and a cubin. Cases: aligned
and misaligned x, size-1 dimensions, every layout kernel, both gamma modes, seeds and rates on
the host and on the device, 1-D/2-D/3-D maps, every cam dtype. Needs TRITON_INTERPRET unset.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Dict, Iterator, List, Tuple

import torch

from ... import state as _state
from ...options import Options
from .. import launch as _launch

_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64",
           torch.int16: "i16", torch.int32: "i32", torch.int64: "i64"}


def specialise(plan, args: tuple, target):
    """``ASTSource`` of ``plan`` for these arguments, specialised as ``JITFunction.run`` would."""
    from triton._C.libtriton import native_specialize_impl
    from triton.compiler import ASTSource
    from triton.compiler.compiler import make_backend

    backend = make_backend(target)
    fn = plan.fn
    values = list(args) + list(plan.cvalues)
    if len(values) != len(fn.params):
        raise ValueError(f"{plan.name}: {len(values)} arguments for {len(fn.params)} parameters")
    signature, constexprs, attrs = {}, {}, {}
    for k, (param, value) in enumerate(zip(fn.params, values)):
        if param.is_constexpr:
            signature[param.name] = "constexpr"
            constexprs[(k,)] = value
            continue
        kind, attr = native_specialize_impl(type(backend), value, False, not param.do_not_specialize,
                                            not param.do_not_specialize_on_alignment)
        signature[param.name] = kind
        if kind == "constexpr":  # an integer 1
            constexprs[(k,)] = attr
        elif isinstance(attr, str) and attr:
            attrs[(k,)] = backend.parse_attr(attr)
    return ASTSource(fn, signature, constexprs, attrs)


def compile_plan(plan, args: tuple, arch: int = 90):
    """triton.compile of one launch plan for sm_<arch> (the CompiledKernel: asm["ptx"], asm["cubin"])."""
    import triton
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", arch, 32)
    src = specialise(plan, args, target)
    return triton.compile(src, target=target, options=plan.options())


@contextlib.contextmanager
def planning() -> Iterator[List[Tuple[object, tuple]]]:
    """Inside, the backend plans launches without running them; the list yielded collects
    (plan, arguments)."""
    captured: List[Tuple[object, tuple]] = []
    saved_hook = _launch.HOOK
    _launch.HOOK = lambda plan, args: captured.append((plan, args))
    try:
        yield captured
    finally:
        _launch.HOOK = saved_hook


def _tensor(shape, dtype, layout="contiguous", aligned=True):
    """An uninitialised CPU tensor standing in for a device one (nothing is read or written)."""
    numel = 1
    for s in shape:
        numel *= s
    if layout == "channels_last" and len(shape) >= 3:
        perm = (0,) + tuple(range(2, len(shape))) + (1,)
        base = torch.empty(numel + (0 if aligned else 1), dtype=dtype)[(0 if aligned else 1):]
        t = base.view([shape[p] for p in perm]).permute(*[perm.index(k) for k in range(len(shape))])
        return t
    if layout == "transposed" and len(shape) >= 4:
        t = _tensor(shape[:-2] + (shape[-1], shape[-2]), dtype, aligned=aligned)
        return t.transpose(-1, -2)
    base = torch.empty(numel + (0 if aligned else 1), dtype=dtype)[(0 if aligned else 1):]
    return base.view(shape)


def plans_for(shape, x_dtype=torch.bfloat16, layout="contiguous", aligned=True, cam_dtype=torch.float32,
              alpha_dtype=None, seed_on_device=False, p_on_device=False, backward=True, state_threads=None,
              **options) -> Dict[str, Tuple[object, tuple]]:
    """{"state": ..., "apply_forward": ..., "apply_backward": ...} (and "finish" with
    normalize="batch"): (plan, args) of one forward (and backward) at this shape, as the backend
    would launch them on a device (the forward's apply computes the batch scale from the counts)."""
    from .. import plan as tb

    N, C, *S = shape
    kw = dict(block_size=7, top_pixels=None, top_channels=None, block_shape="square", normalize="batch",
              gamma_mode="eligible", gamma_scale=1.0)
    kw.update(options)
    opts = Options.get(len(S), kw["block_size"], kw["top_pixels"], kw["top_channels"], kw["block_shape"],
                       kw["normalize"], kw["gamma_mode"], kw["gamma_scale"])
    x = _tensor(tuple(shape), x_dtype, layout, aligned)
    cam = torch.empty((N, *S), dtype=cam_dtype)
    alpha = torch.empty((N, C), dtype=alpha_dtype or cam_dtype)
    seed = torch.tensor(12345, dtype=torch.int64)
    rate = torch.tensor(0.1, dtype=torch.float64)
    out = _state.allocate(x, opts)
    plans = {}
    threads = tb.STATE_THREADS
    with planning():
        try:  # (``state_threads``: the state kernel's program size, a knob the card measures)
            tb.STATE_THREADS = state_threads or threads
            plans["state"] = tb.state_launch(x, cam, alpha, seed, rate, opts, out, seed_on_device, p_on_device)[:2]
        finally:
            tb.STATE_THREADS = threads
        y = torch.empty_like(x)
        batch = kw["normalize"] == "batch"
        plans["apply_forward"] = tb.apply_launch(x, y, out[0], out[1], out[2], out[3] if batch else None)[:2]
        if batch:
            plans["finish"] = tb.finish_launch(x.shape, out[3], out[2])[:2]
        if backward:  # autograd's dy has x's layout; dx is allocated like it
            dy = _tensor(tuple(shape), x_dtype, layout, True)
            plans["apply_backward"] = tb.apply_launch(dy, torch.empty_like(dy), out[0], out[1], out[2])[:2]
    return plans


# The subset the test suite compiles (each state kernel takes a few seconds to build).
CI_CASES = ("bench", "bench channels_last", "bench misaligned", "bench graph (seed, rate on device)",
            "bench, 512-thread state, bf16 cam",
            "size-1 N, C", "large map (chunked selection)", "1-D channels_last", "3-D", "transposed",
            "wide runs, mixed keys")


def cases(which: str = "all") -> Iterator[Tuple[str, object, tuple]]:
    """(name, plan, args) over the distinct specialisations worth compiling: ``which`` is "all",
    "ci" (CI_CASES) or "quick" (the benchmark shape's)."""
    seen = set()
    bench = (64, 256, 56, 56)
    specs = [
        ("bench", bench, dict()),
        ("bench dropblock", bench, dict(gamma_mode="dropblock")),
        ("bench channels_last", bench, dict(layout="channels_last")),
        ("bench misaligned", bench, dict(aligned=False)),
        ("bench graph (seed, rate on device)", bench, dict(seed_on_device=True, p_on_device=True)),
        ("bench, 512-thread state, bf16 cam", bench, dict(state_threads=512, cam_dtype=torch.bfloat16)),
        ("size-1 N, C", (1, 1, 14, 14), dict()),
        ("size-1 H, W", (8, 64, 1, 1), dict()),
        ("size-1 H", (4, 32, 1, 50), dict(layout="channels_last")),
        ("small maps, many channels", (16, 2048, 7, 7), dict(x_dtype=torch.float16)),
        ("large map (chunked selection)", (2, 16, 80, 70), dict(x_dtype=torch.float32, cam_dtype=torch.float64)),
        ("diamond sample", (8, 64, 28, 28), dict(block_shape="diamond", normalize="sample", cam_dtype=torch.float16)),
        ("none, bf16 cam", (8, 64, 28, 28), dict(normalize="none", cam_dtype=torch.bfloat16,
                                                 x_dtype=torch.float64)),
        ("transposed", (4, 16, 9, 12), dict(layout="transposed", x_dtype=torch.float32)),
        ("1-D", (4, 32, 100), dict()),
        ("1-D channels_last", (4, 32, 100), dict(layout="channels_last")),
        ("3-D", (2, 16, 4, 9, 9), dict(block_size=3)),
        ("3-D channels_last", (2, 16, 4, 9, 9), dict(layout="channels_last", block_size=3)),
        ("wide runs, mixed keys", (3, 5, 40), dict(block_size=35, top_pixels=1.0, x_dtype=torch.float32,
                                                   cam_dtype=torch.float16, alpha_dtype=torch.float64)),
        ("many channels, small C tiles", (2, 4100, 2, 2), dict(layout="channels_last")),
        ("few channels, wide NHWC tiles", (2, 4, 12, 12), dict(layout="channels_last", x_dtype=torch.float32)),
    ]
    from triton.backends.compiler import GPUTarget

    target = GPUTarget("cuda", 90, 32)
    for name, shape, kw in specs:
        if (which == "quick" and not name.startswith("bench")) or (which == "ci" and name not in CI_CASES):
            continue
        for which, (plan, args) in plans_for(shape, **kw).items():
            src = specialise(plan, args, target)
            sig = (plan.fn.__name__, tuple(src.signature.items()), repr(sorted(src.constants.items())),
                   repr(sorted(src.attrs.items())), plan.num_warps)
            if sig in seen:
                continue
            seen.add(sig)
            yield f"{plan.name}[{name}, {which}]", plan, args


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", type=int, nargs="+", default=[90])
    parser.add_argument("--cases", choices=("all", "ci", "quick"), default="all",
                        help="all cases, the test suite's subset, or the benchmark shape's only")
    args = parser.parse_args(argv)
    if _launch.INTERPRET:
        print("compile_check: unset TRITON_INTERPRET (it compiles for a GPU target)", file=sys.stderr)
        return 2
    import triton

    print(f"triton {triton.__version__}", flush=True)
    failures = 0
    for name, plan, plan_args in cases(args.cases):
        for arch in args.arch:
            t0 = time.perf_counter()
            try:
                compiled = compile_plan(plan, plan_args, arch)
                ok = "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0
                print(f"sm_{arch} {name}: {'ok' if ok else 'NO CUBIN'} "
                      f"({len(compiled.asm['ptx'])} B PTX, {time.perf_counter() - t0:.1f} s)", flush=True)
                failures += not ok
            except Exception as exc:  # report every failure, not just the first
                print(f"sm_{arch} {name}: FAILED {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
                failures += 1
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
