"""GPU timings for benchmarks/gpu_check.sh: CamDrop at (64, 256, 56, 56) bfloat16 against the copy and
multiply floors and its peers, in both gamma modes, NCHW and channels_last.

Each contender is timed three ways: wall clock around one call with a sync after it (host time
plus one launch wave: what the old check measured), CUDA events around K back-to-back calls
(device time per call, or host time per call when the host is the slower: the first card's was,
for CamDrop's eager calls), and replays of a CUDA graph of K calls (device time without launch
gaps). Medians of R repetitions. Figures go to ``--out`` as JSON; the targets of issue 14 are
judged from both the event and the graph timings. Two multiply floors: by a 0-d device tensor
(PyTorch's unvectorised broadcast) and by a Python number (vectorised, the stricter).

Two CAMs: a float32 one (randn), and the bound layer's real case, ``class_activation_map(x, alpha)``
of the bf16 x (what a bound layer hands over under bf16 autocast: a bf16 map, many values tied at
the n-th). Two device times for CamDrop, labelled: "graph" (a CUDA graph of calls with seed=None, as
users capture them: each call also draws its seed on the device) and "[fixed seed]" rows timed the
same way with an int seed (passed by value: the kernels an eager call runs, without the seed draw:
eager device time). "mask build" is ``build_state`` alone (state kernel, plus the one-program finish
kernel for normalize="batch"); "state only" is it with normalize="sample" (the state kernel alone).

``--one-forward`` warms up and then runs exactly one CamDrop forward between
cudaProfilerStart/Stop, for ``ncu --profile-from-start off``.

``CAMDROP_GPU_DRY_RUN=1`` runs the same code on the CPU at a tiny shape, with wall-clock
timers standing in for CUDA events and no graphs: the smoke test's check that the script works
before a card is lent (its figures mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F

import camdrop_kernels as ck
from camdrop_kernels import ops
from camdrop_kernels.options import Options

DRY_RUN = os.environ.get("CAMDROP_GPU_DRY_RUN") == "1"
DEVICE = "cpu" if DRY_RUN else "cuda"
SHAPE = (4, 32, 16, 16) if DRY_RUN else (64, 256, 56, 56)
DTYPE = torch.bfloat16
P_DROP, BLOCK = 0.1, 7


def sync() -> None:
    if not DRY_RUN:
        torch.cuda.synchronize()


class Clock:
    """CUDA events (device time), or the wall clock in a dry run."""

    def __init__(self):
        self.cuda = None if DRY_RUN else torch.cuda.Event(enable_timing=True)
        self.t = 0.0

    def record(self) -> None:
        if self.cuda is None:
            self.t = time.perf_counter()
        else:
            self.cuda.record()

    def elapsed_ms(self, end: "Clock") -> float:
        """Milliseconds from this mark to ``end`` (waits for ``end``)."""
        if self.cuda is None:
            return (end.t - self.t) * 1e3
        end.cuda.synchronize()
        return self.cuda.elapsed_time(end.cuda)


def device_name() -> str:
    return "cpu (dry run)" if DRY_RUN else torch.cuda.get_device_name()


def inputs(layout: str, requires_grad: bool = False):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    N, C, H, W = SHAPE
    x = torch.randn(SHAPE, device=DEVICE, dtype=DTYPE, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    cam = torch.randn(N, H, W, device=DEVICE, generator=g)
    alpha = torch.randn(N, C, device=DEVICE, generator=g)
    return x.requires_grad_(requires_grad), cam, alpha


def bound_cam(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The CAM a bound layer builds under bf16 autocast: sum_c alpha[n, c] * x[n, c] in x's dtype."""
    with torch.no_grad():
        return ck.class_activation_map(x.detach(), alpha)


def timed(fn: Callable[[], object], reps: int = 15, inner: int = 10, graph: bool = True) -> Dict[str, Optional[float]]:
    """{"wall_us", "event_us", "graph_us"} per call (medians), graph_us None if capture failed."""
    if DRY_RUN:
        reps, inner, graph = 2, 2, False
    for _ in range(3):
        fn()
    sync()
    wall = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        wall.append((time.perf_counter() - t0) * 1e6)
    start, end = Clock(), Clock()
    events = []
    for _ in range(reps):
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        events.append(start.elapsed_ms(end) * 1e3 / inner)
    out = dict(wall_us=statistics.median(wall), event_us=statistics.median(events), graph_us=None,
               graph_error="dry run: no CUDA graphs" if DRY_RUN else None)
    if graph:
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(inner):
                    fn()
            g.replay()
            torch.cuda.synchronize()
            replays = []
            for _ in range(reps):
                start.record()
                g.replay()
                end.record()
                replays.append(start.elapsed_ms(end) * 1e3 / inner)
            out["graph_us"] = statistics.median(replays)
            del g
        except Exception as exc:  # report, do not fail the run
            out["graph_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    sync()
    return out


def contenders(layout: str) -> Dict[str, tuple]:
    """name -> (fn, bytes moved per call, pass); "x" -> the forward input they share."""
    x, cam, alpha = inputs(layout)
    xg, _, _ = inputs(layout, requires_grad=True)
    dy = torch.randn_like(x)
    nbytes = x.numel() * x.element_size()
    scale = torch.tensor(1 / (1 - P_DROP), device=DEVICE, dtype=DTYPE)
    found: Dict[str, tuple] = {
        "copy": (lambda: x.clone(), 2 * nbytes, "forward"),
        # Two bare multiplies: by a 0-d device tensor (PyTorch's broadcast path, not vectorised:
        # about half the copy's rate on an H200) and by a Python number (vectorised: the stricter floor).
        "multiply": (lambda: x * scale, 2 * nbytes, "forward"),
        "multiply fwd+bwd": (lambda: torch.autograd.grad(xg * scale, xg, dy), 4 * nbytes, "forward+backward"),
        "multiply (scalar)": (lambda: x * (1 / (1 - P_DROP)), 2 * nbytes, "forward"),
        "multiply (scalar) fwd+bwd": (lambda: torch.autograd.grad(xg * (1 / (1 - P_DROP)), xg, dy), 4 * nbytes,
                                      "forward+backward"),
    }
    cam_b = bound_cam(x, alpha)
    cases = [("eligible", "", cam), ("dropblock", "", cam), ("eligible", ", bf16 cam", cam_b)]
    for mode, tag, cam_k in cases:
        kw = dict(gamma_mode=mode)
        opts = Options.get(2, BLOCK, None, None, "square", "batch", mode, 1.0)
        opts_s = Options.get(2, BLOCK, None, None, "square", "sample", mode, 1.0)
        seed, rate = torch.tensor(1234), torch.tensor(P_DROP, dtype=torch.float64)
        state = ops.build_state(x, cam_k, alpha, seed, rate, opts)
        name = f"{mode}{tag}"
        found[f"camdrop[{name}]"] = (lambda kw=kw, c=cam_k: ck.camdrop(x, c, alpha, P_DROP, BLOCK, **kw), 2 * nbytes,
                                     "forward")
        found[f"camdrop[{name}] fixed seed"] = (
            lambda kw=kw, c=cam_k: ck.camdrop(x, c, alpha, P_DROP, BLOCK, seed=1234, **kw), 2 * nbytes, "forward")
        found[f"camdrop[{name}] fwd+bwd"] = (
            lambda kw=kw, c=cam_k: torch.autograd.grad(ck.camdrop(xg, c, alpha, P_DROP, BLOCK, **kw), xg, dy),
            4 * nbytes, "forward+backward")
        found[f"mask build[{name}]"] = (lambda opts=opts, c=cam_k: ops.build_state(x, c, alpha, seed, rate, opts), 0,
                                        "forward")
        found[f"state only[{name}]"] = (lambda opts=opts_s, c=cam_k: ops.build_state(x, c, alpha, seed, rate, opts),
                                        0, "forward")
        found[f"apply[{name}]"] = (lambda state=state: ops.camdrop_apply(x, *state[:3]), 2 * nbytes, "forward")
    found["F.dropout"] = (lambda: F.dropout(x, P_DROP, training=True), 2 * nbytes, "forward")
    try:
        from timm.layers.drop import drop_block_2d

        found["timm drop_block_2d[coupled]"] = (
            lambda: drop_block_2d(x, P_DROP, BLOCK, couple_channels=True), 2 * nbytes, "forward")
        found["timm drop_block_2d[per channel]"] = (
            lambda: drop_block_2d(x, P_DROP, BLOCK, couple_channels=False), 2 * nbytes, "forward")
    except Exception as exc:  # timm missing or its API changed: say so in the output
        print(f"gpu_bench: timm DropBlock unavailable: {exc}", file=sys.stderr)
    try:
        from torchvision.ops import drop_block2d

        found["torchvision drop_block2d"] = (lambda: drop_block2d(x, P_DROP, BLOCK), 2 * nbytes, "forward")
    except Exception as exc:
        print(f"gpu_bench: torchvision drop_block2d unavailable: {exc}", file=sys.stderr)
    found["x"] = x
    return found


def dropped_share(fn: Callable[[], object], x: torch.Tensor) -> Optional[float]:
    """The share of x's elements a forward zeroed (nonzero in x, zero in its output), or None when
    its output is not a tensor like x (the floors, the state build)."""
    y = fn()
    if not isinstance(y, torch.Tensor) or y.shape != x.shape:
        return None
    return float(((y == 0) & (x != 0)).sum()) / x.numel()


def run(layouts=("contiguous", "channels_last")) -> dict:
    results: Dict[str, dict] = {}
    for layout in layouts:
        found = contenders(layout)
        x = found.pop("x")
        for name, (fn, nbytes, kind) in found.items():
            t = timed(fn)
            t.update(bytes=nbytes, kind=kind)
            if kind == "forward" and not name.startswith(("copy", "multiply")):
                t["dropped"] = dropped_share(fn, x)  # beside every time: a layer that drops nothing proves nothing
            if nbytes:
                t["event_gbs"] = nbytes / t["event_us"] / 1e3
                if t["graph_us"]:
                    t["graph_gbs"] = nbytes / t["graph_us"] / 1e3
            results[f"{layout} | {name}"] = t
            share = t.get("dropped")
            print(f"{layout:14s} {name:34s} wall {t['wall_us']:9.1f} us  event {t['event_us']:9.1f} us  graph "
                  f"{t['graph_us'] if t['graph_us'] is None else round(t['graph_us'], 1)} us"
                  + (f"  dropped {100 * share:.2f}%" if share is not None else ""), flush=True)
        if not DRY_RUN:
            torch.cuda.empty_cache()
    return dict(device=device_name(), torch=torch.__version__, shape=list(SHAPE), dtype=str(DTYPE),
                results=results, targets=targets(results, layouts))


def targets(results: dict, layouts) -> list:
    """Issue 14's per-layout targets from the event (and graph) timings: (text, value, met)."""
    out = []
    for layout in layouts:
        r = {k.split(" | ", 1)[1]: v for k, v in results.items() if k.startswith(layout + " | ")}
        for mode in ("eligible", "dropblock", "eligible, bf16 cam"):
            fwd, fb = r.get(f"camdrop[{mode}]"), r.get(f"camdrop[{mode}] fwd+bwd")
            if not fwd:
                continue
            fixed = r.get(f"camdrop[{mode}] fixed seed", {})
            for clock, label in (("event", "event"), ("graph", "graph, seed drawn on the device"),
                                 ("fixed", "eager device time: graph, fixed seed")):
                us = fixed.get("graph_us") if clock == "fixed" else fwd.get(f"{clock}_us")
                copy_us = r["copy"].get("graph_us" if clock == "fixed" else f"{clock}_us")
                if us and copy_us:
                    share = copy_us / us  # same bytes: bandwidth ratio
                    out.append((f"{layout} {mode} forward / copy bandwidth ({label})", round(share, 3), share >= 0.85))
            for floor in ("multiply fwd+bwd", "multiply (scalar) fwd+bwd"):
                for clock in ("event", "graph"):
                    if fb and r.get(floor) and fb.get(f"{clock}_us") and r[floor].get(f"{clock}_us"):
                        ratio = fb[f"{clock}_us"] / r[floor][f"{clock}_us"]
                        out.append((f"{layout} {mode} fwd+bwd / {floor} ({clock})", round(ratio, 3), ratio <= 1.15))
            # The mask build's share of the forward in device time only (graph replays: the event
            # figure of a short kernel is the host's enqueue time when the host is slow).
            state_only, base = r.get(f"state only[{mode}]"), fixed or fwd
            if state_only and state_only.get("graph_us") and base.get("graph_us"):
                share = state_only["graph_us"] / base["graph_us"]
                out.append((f"{layout} {mode} state kernel / forward (graph, fixed seed)", round(share, 3),
                            share < 0.10))
            for peer in ("F.dropout", "timm drop_block_2d[coupled]", "timm drop_block_2d[per channel]",
                         "torchvision drop_block2d"):
                if peer in r:
                    speedup = r[peer]["event_us"] / fwd["event_us"]
                    out.append((f"{layout} {mode} speed-up over {peer} (event)", round(speedup, 2), speedup > 1.0))
    return out


def one_forward() -> None:
    """Warm up, then exactly one forward with a float32 and one with the bound layer's bf16 CAM between
    cudaProfilerStart/Stop (ncu: ``-k regex:state_kernel`` keeps the state launches)."""
    x, cam, alpha = inputs("contiguous")
    cam_b = bound_cam(x, alpha)  # (the bound layer's bf16 CAM, with ties)
    for c in (cam, cam_b):
        ck.camdrop(x, c, alpha, P_DROP, BLOCK, seed=5)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for c in (cam, cam_b):
        ck.camdrop(x, c, alpha, P_DROP, BLOCK, seed=5)
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--one-forward", action="store_true")
    args = parser.parse_args(argv)
    if args.one_forward:
        one_forward()
        return 0
    result = run()
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    print("\ntargets (issue 14):")
    for text, value, met in result["targets"]:
        print(f"  {'met ' if met else 'MISS'} {text}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
