"""Compile every Triton kernel ahead of time for CUDA targets, on a machine without a GPU.

``python -m camdrop_kernels.triton_backend.compile_check --arch 80 90`` builds PTX and a
cubin for each kernel over a spread of dtypes, layouts and modes, from the same launch
plans the backend runs (with meta tensors), and prints one line per compiled kernel.
A kernel that runs in the interpreter can still fail here. Needs TRITON_INTERPRET unset.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from ..config import CamDropConfig
from . import plan_apply, plan_mask, plan_select

_PTR = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32", torch.float64: "*fp64",
        torch.int16: "*i16", torch.int32: "*i32", torch.int64: "*i64"}


def _arg_type(value) -> str:
    if isinstance(value, torch.Tensor):
        return _PTR[value.dtype]
    if isinstance(value, bool):
        return "i1"
    if isinstance(value, int):
        return "i32" if -(2**31) <= value < 2**31 else "i64"
    if isinstance(value, float):
        return "fp32"
    raise TypeError(f"no Triton type for {value!r}")


def compile_launch(launch, arch: int):
    """triton.compile of one launch plan's kernel with its argument types and constexprs."""
    fn = launch.kernel
    values = dict(zip(fn.arg_names, launch.args))
    signature, constexprs = {}, {}
    for name in fn.arg_names:
        if name in launch.constexprs:
            signature[name] = "constexpr"
            constexprs[name] = launch.constexprs[name]
        else:
            signature[name] = _arg_type(values[name])
    src = ASTSource(fn, signature, constexprs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": launch.num_warps})


def launches():
    """(name, Launch) pairs covering the specialisations that matter, built on meta tensors."""
    meta = torch.device("meta")
    seed = torch.empty((), dtype=torch.int64, device=meta)
    shapes = [(8, 64, 14, 14), (2, 16, 80, 70)]  # 80*70 > 4096: the chunked selection path
    for (N, C, H, W), cam_dtype, shape, mode in itertools.product(
        shapes, [torch.float16, torch.bfloat16, torch.float32, torch.float64], ["square", "diamond"],
        ["dropblock", "eligible"],
    ):
        if (shape, mode) not in (("square", "dropblock"), ("diamond", "eligible")) and cam_dtype != torch.float32:
            continue
        cfg = CamDropConfig.build((N, C, H, W), 0.1, 5, None, None, shape, "batch", mode, 1.0)
        cam = torch.empty((N, H, W), dtype=cam_dtype, device=meta)
        alpha = torch.empty((N, C), dtype=cam_dtype, device=meta)
        sel, (pix, count, gamma, chan, slot) = plan_select(cam, alpha, cfg)
        yield f"select[{cam_dtype}, {H}x{W}, {mode}]", sel
        mask, (bits, dropped) = plan_mask(seed, pix, count, gamma, chan, cfg)
        yield f"mask[{shape}, {mode}, {H}x{W}]", mask
    cfg = CamDropConfig.build((8, 64, 14, 14), 0.1, 5, None, None, "square", "batch", "dropblock", 1.0)
    slot = torch.empty((8, 64), dtype=torch.int32, device=meta)
    bits = torch.empty((8, 8, 7), dtype=torch.int32, device=meta)
    dropped = torch.empty((8,), dtype=torch.int64, device=meta)
    for dtype, layout, normalize, forward in itertools.product(
        [torch.float16, torch.bfloat16, torch.float32, torch.float64],
        ["contiguous", "channels_last", "transposed"], ["batch", "sample", "none"], [True, False],
    ):
        if normalize != "batch" and (dtype != torch.float32 or layout != "contiguous" or not forward):
            continue
        x = torch.empty((8, 64, 14, 14), dtype=dtype, device=meta)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "transposed":
            x = x.transpose(2, 3)
        scale = torch.empty((8,), dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=meta)
        y = torch.empty_like(x)
        yield (f"apply[{dtype}, {layout}, {normalize}, {'forward' if forward else 'backward'}]",
               plan_apply(x, y, slot, bits, dropped if forward else None, scale, normalize, forward))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    args = parser.parse_args(argv)
    failures = 0
    for name, launch in launches():
        for arch in args.arch:
            t0 = time.perf_counter()
            try:
                compiled = compile_launch(launch, arch)
                ok = "cubin" in compiled.asm and len(compiled.asm["cubin"]) > 0
                print(f"sm_{arch} {name}: {'ok' if ok else 'NO CUBIN'} "
                      f"({len(compiled.asm['ptx'])} B PTX, {time.perf_counter() - t0:.1f} s)", flush=True)
                failures += not ok
            except Exception as exc:  # report every failure, not just the first
                print(f"sm_{arch} {name}: FAILED {type(exc).__name__}: {exc}", flush=True)
                failures += 1
    print(f"{failures} failure(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
