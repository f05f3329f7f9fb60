"""Paired timing of two builds of the native extension through ``ck.camdrop`` (benchmarks/paired.py's
method: the contenders called in turn in interleaved rounds, each ratio the median over rounds of
its time over the first's in the same round, which cancels a shared machine's slow spells).

    python tools/bench_native.py BASE.so [NEW.so] [--reps 200] [--threads 1,2]

BASE.so (and NEW.so, default: the package's own ``_native``) are loaded side by side and swapped
into the backend module before each call, so both run the same Python path. Shapes: (16, 256,
28, 28) block 7 and (8, 1024, 7, 7) block 3 (the block ``convert`` uses at that stage: block 7
has one valid centre there and drops nothing), float32, contiguous and channels_last, eligible
mode, drop_prob 0.1; the share dropped is printed beside each.
"""
import argparse
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package

import torch  # noqa: E402

import camdrop_kernels as ck  # noqa: E402


def load(path: str):
    """An extension module from ``path`` under the name its init function expects (not registered
    in sys.modules, so two builds can live side by side)."""
    loader = importlib.machinery.ExtensionFileLoader("camdrop_kernels._native", path)
    spec = importlib.util.spec_from_file_location("camdrop_kernels._native", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def backend_module():
    for name in ("camdrop_kernels.backends.native", "camdrop_kernels.cpu_native"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_native"):
            return module
    raise SystemExit("no backend module with a _native attribute found")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base")
    ap.add_argument("new", nargs="?")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--threads", default="1,2")
    args = ap.parse_args()
    host = backend_module()
    builds = {"base": load(args.base), "new": load(args.new) if args.new else host._native}
    cases = [((16, 256, 28, 28), 7, False), ((16, 256, 28, 28), 7, True), ((8, 1024, 7, 7), 3, False)]
    for threads in map(int, args.threads.split(",")):
        torch.set_num_threads(threads)
        for shape, block, cl in cases:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(shape, generator=g)
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            cam, alpha = torch.randn(shape[0], *shape[2:], generator=g), torch.randn(shape[:2], generator=g)

            def call():
                return ck.camdrop(x, cam, alpha, 0.1, block, seed=1234)

            ys = {}
            for name, mod in builds.items():
                host._native = mod
                ys[name] = call()
            assert torch.equal(ys["base"], ys["new"]), "the builds disagree"
            dropped = float((ys["new"] == 0).double().mean())
            times = {k: [] for k in builds}
            for name, mod in builds.items():  # warm-up
                host._native = mod
                for _ in range(5):
                    call()
            for rep in range(args.reps):  # alternating order: neither build always runs first
                for name, mod in (list(builds.items()) if rep % 2 == 0 else list(builds.items())[::-1]):
                    host._native = mod
                    t0 = time.perf_counter()
                    call()
                    times[name].append(time.perf_counter() - t0)
            ratio = sorted(a / b for a, b in zip(times["new"], times["base"]))[args.reps // 2]
            med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
            label = f"{'x'.join(map(str, shape))} block {block}{' CL' if cl else ''}, {threads} thread(s)"
            print(f"{label:44s} base {med['base']:.3f} ms  new {med['new']:.3f} ms  new/base {ratio:.3f}"
                  f"  (dropped {dropped:.1%})", flush=True)
    host._native = builds["new"]


if __name__ == "__main__":
    main()
