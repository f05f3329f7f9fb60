"""Static figures of the Triton backend, measurable without a GPU.

``python -m camdrop_kernels.triton_backend.report --json`` prints one JSON object for the
benchmark shape ((64, 256, 56, 56) bfloat16, block 7, defaults otherwise), compiled for sm_90:

- ``kernels``: each kernel variant a forward or backward launches, compiled with the launcher's
  real specialisation: ``regs``, ``spills`` (STL/LDL instructions; stack and local bytes beside),
  ``shared_bytes``, and for ``apply`` ``sass_per_element``: SASS warp instructions per element
  along the plain path and the masked path (the kernel has no loops: each path is counted
  exactly from the cubin), weighted by the share of programs that take the masked path at this
  shape; for ``state`` an estimate of the instructions one warp executes (loop bodies from the
  cubin times trip counts from the launch plan) and a time model (below).
- ``launches``: launches per forward and per backward on the CUDA code path: the backend's own
  kernel launches plus every torch operation that would launch a device kernel (fills, copies),
  counted through the public ``camdrop`` call with launches stubbed out.
- ``host_us``: microseconds of Python per forward and per backward with launches stubbed out
  (the backend alone, and the whole public call on CPU tensors standing in for device ones).
- ``targets``: issue 13's targets with the figures they are judged by.

The time model (a model, labelled as such), for the card the calibration was measured on (an
H200: 132 SMs, 1.98 GHz, the copy's 4.14 TB/s). ``apply`` moves 2 * numel * itemsize bytes at that
bandwidth. ``state``: the clocks of one SM's wave of programs = (warp instructions executed by one
warp) x ``CPI`` + the dependent global-memory round trips (``round_trips``, public H100 latencies),
times the waves (programs per SM over the programs that fit one SM at once). Instructions count the
code on the benchmark's path: branches marked ``# cold`` in the kernel source are left out, loops
count their bodies times the trips the launch plan implies. ``CPI`` (cycles per warp instruction of
a lone program's warps, two per scheduler) is fitted to the H200's measurement of the OLD state
kernel (commit f610a2f: a radix select with histograms in L2 and a completion ticket) at the
benchmark shape, from that kernel's own SASS (tools/calibration.py, from
tools/calibrate_old.py); the other shapes the H200 measured then are held out, and ``calibration``
reports the model's error on each. The old kernel stalled on L2 round trips, the new one on
barriers and shuffles: one CPI for both is the model's main assumption (see "trust").

``--triton-path DIR`` runs the same under another Triton installed there (e.g. 3.6.0 from
``pip install --no-deps --target DIR triton==3.6.0``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

BENCH_SHAPE = (64, 256, 56, 56)
BENCH_DTYPE = torch.bfloat16
SMS = 132  # H100 SXM and H200
CLOCK_GHZ = 1.98  # the H200's SM clock under load (ncu: 1.97)
BANDWIDTH = 205.5e6 / 49.6e-6  # bytes/s: the H200's measured copy at the bench shape (4.14 TB/s)
# The state kernel's dependent global-memory round trips, in order, with their latencies in clocks
# (H100 microbenchmarks: L2 hit ~300, DRAM ~600). No atomics, no ticket.
ROUND_TRIPS = (("cam and alpha rows (DRAM)", 600), ("keys re-read for the ranks (L1/L2)", 300),
               ("top-pixel and channel lists read back (L2)", 300), ("runs read back for the dilation (L1/L2)", 300))
_ATOMICS = ("ATOM", "ATOMG", "ATOMS", "RED", "REDG", "MEMBAR")


def _compile_variants(shape, dtype) -> List[dict]:
    from .. import state_kernel as sk
    from . import compile_check as cc
    from .sass import Sass, source_regions

    out = []
    variants = [
        ("state", "eligible, float32 cam", dict(), "state"),
        ("state", "eligible, bfloat16 cam (a bound layer under autocast)", dict(cam_dtype=torch.bfloat16,
                                                                                alpha_dtype=torch.float32), "state"),
        ("state", "eligible, bfloat16 cam and alpha", dict(cam_dtype=torch.bfloat16), "state"),
        ("state", "dropblock, float32 cam", dict(gamma_mode="dropblock"), "state"),
        ("apply_nchw", "forward, NCHW (batch scale from the counts)", dict(), "apply_forward"),
        ("apply_nchw", "backward, NCHW", dict(), "apply_backward"),
        ("apply_nhwc", "forward, channels_last", dict(layout="channels_last"), "apply_forward"),
        ("apply_nhwc", "backward, channels_last", dict(layout="channels_last"), "apply_backward"),
    ]
    loops, cold = source_regions(sk.__file__)
    for name, variant, kw, which in variants:
        plans = cc.plans_for(shape, x_dtype=dtype, **kw)
        plan, args = plans[which]
        assert plan.name == name, (plan.name, name)
        t0 = time.perf_counter()
        compiled = cc.compile_plan(plan, args)
        sass = Sass(compiled.asm["cubin"])
        res = sass.resources
        entry = dict(name=name, variant=variant, warps=plan.num_warps, programs=math.prod(plan.grid),
                     regs=res["reg"], spills=res["spill_instructions"], stack_bytes=res["stack"],
                     local_bytes=res["local"], shared_bytes=int(compiled.metadata.shared),
                     sass_instructions=len(sass.instrs), barriers_static=sass.count("BAR"),
                     atomics_static=sum(ins.base in _ATOMICS for ins in sass.instrs),
                     compile_s=round(time.perf_counter() - t0, 2),
                     constexprs={k: v for k, v in plan.constexprs.items() if not isinstance(v, bool) or v})
        if name == "state":
            entry.update(_state_estimate(plan, sass, loops, cold, shape, dtype, kw))
        else:
            entry.update(_apply_figures(plan, sass, shape))
        out.append(entry)
    return out


def _apply_figures(plan, sass, shape) -> dict:
    """Warp instructions per element along the plain and masked paths, and their weighted mean."""
    short, long_ = sass.paths(loops_once=True)  # (the forward's batch-scale prologue: one trip)
    elements = plan.info["elements"]
    plain = short * plan.num_warps / elements
    masked = long_ * plan.num_warps / elements
    share = _masked_share(plan, shape) if plan.name == "apply_nchw" else 1.0
    if short == long_:
        share = 1.0
    return dict(sass_per_element=round((1 - share) * plain + share * masked, 4),
                sass_per_element_plain=round(plain, 4), sass_per_element_masked=round(masked, 4),
                masked_share=round(share, 4), elements_per_program=elements)


def _masked_share(plan, shape) -> float:
    """Expected share of NCHW chunks touching a top plane, the top channels a uniformly random
    n' of C (exact over the chunks of one sample)."""
    from ...options import Options

    N, C, *S = shape
    P = math.prod(S)
    nc = Options.get(len(S), 7, None, None, "square", "batch", "eligible", 1.0).geometry(C, tuple(S)).top_channels
    block = plan.constexprs["BLOCK"]
    total, hits = 0, 0.0
    for j in range(math.ceil(C * P / block)):
        c0 = (j * block) // P
        c1 = min((min((j + 1) * block, C * P) - 1) // P, C - 1)
        k = c1 - c0 + 1
        none = 1.0
        for t in range(k):
            none *= (C - nc - t) / (C - t)
        hits += 1 - none
        total += 1
    return hits / total


def _ukeys_host(t: torch.Tensor) -> List[int]:
    """The state kernel's unsigned-order keys of a float row (NaN as -inf, -0.0 as +0.0)."""
    bits = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}[t.dtype]
    ints = t.contiguous().view({16: torch.int16, 32: torch.int32, 64: torch.int64}[bits]).tolist()
    mag, top = (1 << (bits - 1)) - 1, 1 << (bits - 1)
    exp = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80, torch.float32: 0x7F800000,
           torch.float64: 0x7FF0000000000000}[t.dtype]
    out = []
    for b in ints:
        if (b & mag) > exp:  # NaN: as -inf
            b = exp - top
        key = b if b >= 0 else b ^ mag
        if key == -1:
            key = 0
        out.append(key + top)  # the sign bit flipped
    return out, bits


def search_steps(row: torch.Tensor, n: int) -> int:
    """Steps the state kernel's search takes on one row (two bits a step, stopping once exactly n
    keys are >= T): the host replay of state_kernel._next, for the trip count of the search loop."""
    keys, bits = _ukeys_host(row)
    T, CT, steps = 0, len(keys), 0
    for S in range(bits - 2, -1, -2):
        if CT == n:
            break
        counts = [sum(k >= T + (d << S) for k in keys) for d in (1, 2, 3)]
        d = sum(c >= n for c in counts)
        if d:
            CT = counts[d - 1]
        T += d << S
        steps += 1
    return steps


def expected_search_steps(plan, cam_dtype, alpha_dtype, samples: int = 2) -> float:
    """The search loop's trips on the benchmark's data: randn cam and alpha rows in their dtypes (a
    bf16 CAM of the bench: its ties at the n-th value run every step), the larger of the two rows'
    step counts, averaged over a few samples."""
    geo = plan.info["geometry"]
    g = torch.Generator().manual_seed(0)
    steps = []
    for _ in range(samples):
        cam = torch.randn(geo.P, generator=g).to(cam_dtype)
        alpha = torch.randn(geo.C, generator=g).to(alpha_dtype)
        steps.append(max(search_steps(cam, geo.top_pixels), search_steps(alpha, geo.top_channels)))
    return sum(steps) / len(steps)


def _state_trips(plan, search: float = 0.0) -> Dict[str, float]:
    """Trips of each marked loop of the state kernel for one program of this plan."""
    from ..launch import cdiv

    info, ce = plan.info, plan.constexprs
    geo = info["geometry"]
    n, nc, words = geo.top_pixels, geo.top_channels, geo.words
    static = plan.static_named
    zero_words = info["copies"] * nc * static["hs_stride"]
    return dict(
        zero=cdiv(zero_words, ce["ZB"]), valid=cdiv(n, ce["SB"]) - 1, planes=cdiv(nc, ce["PB"]),
        seeds=cdiv(n, ce["SB"]), runs=info["copies"] // ce["WPR"], dilate=cdiv(nc * words, ce["ZB"]),
        rows_d=static["up_d"] + static["down_d"] + 1, rows_h=static["up_h"] + static["down_h"] + 1,
        search=search,
        merge_copies=info["copies"] // ce["WPR"] if ce["WPR"] > 1 else 0,
        merge=cdiv(nc * static["hs_stride"], ce["ZB"]) if ce["WPR"] > 1 else 0,
        select_chunks=0, rank_chunks=0, batch_counts=0, batch_store=0,
    )


def calibration() -> dict:
    """The fitted CPI and the model's error on every point the H200 measured (the old kernel)."""
    from .calibration import CALIBRATION as cal

    points = cal["points"]
    fit = next(p for p in points if p["fit"])
    clocks = fit["measured_us"] * CLOCK_GHZ * 1e3
    cpi = (clocks - fit["round_trip_clocks"]) / fit["instructions_per_warp"]
    rows = []
    for p in points:
        model = (p["instructions_per_warp"] * cpi + p["round_trip_clocks"]) * p["waves"] / (CLOCK_GHZ * 1e3)
        rows.append(dict(case=p["case"], measured_us=p["measured_us"], model_us=round(model, 2),
                         error=round(model / p["measured_us"] - 1, 3), fitted=p["fit"]))
    held = [abs(r["error"]) for r in rows if not r["fitted"]]
    return dict(cpi=round(cpi, 3), card=cal["card"], triton=cal["triton"], source=cal["source"], points=rows,
                held_out_max_abs_error=round(max(held), 3) if held else None,
                held_out_mean_abs_error=round(sum(held) / len(held), 3) if held else None)


def _state_estimate(plan, sass, loops, cold, shape, dtype, kw) -> dict:
    from .. import state_kernel as sk

    search = expected_search_steps(plan, kw.get("cam_dtype", torch.float32),
                                   kw.get("alpha_dtype", kw.get("cam_dtype", torch.float32)))
    trips = _state_trips(plan, search)
    per_warp, detail = sass.estimate({k: (loops[k], trips[k]) for k in loops}, cold)
    barriers, _ = sass.estimate({k: (loops[k], trips[k]) for k in loops}, cold, only=("BAR",))
    shuffles, _ = sass.estimate({k: (loops[k], trips[k]) for k in loops}, cold, only=("SHFL",))
    programs = math.prod(plan.grid)
    per_sm_at_once = 2 if sass.resources["reg"] <= 128 else 1  # 256-thread programs an SM holds
    waves = math.ceil(programs / (SMS * per_sm_at_once))
    cpi = calibration()["cpi"]
    trips_clocks = sum(c for _, c in ROUND_TRIPS)
    clocks = (per_warp * cpi + trips_clocks) * waves
    state_us = clocks / (CLOCK_GHZ * 1e3)
    # The floor: every warp instruction issued, two warps per scheduler (8 per SM), one issue a
    # cycle, no stall at all, plus the round trips.
    floor_us = (per_warp * plan.num_warps / 4 + trips_clocks) * waves / (CLOCK_GHZ * 1e3)
    apply_us = _apply_time_us(shape, dtype)
    atomics = sum(ins.base in _ATOMICS for ins in sass.instrs)
    del sk
    return dict(instructions_per_warp=round(per_warp), barriers_per_warp=round(barriers),
                shuffles_per_warp=round(shuffles), loops=detail, trips=trips, waves=waves,
                l2_atomics=0 if atomics == 0 else None, ticket=False,
                clocks=dict(instructions=round(per_warp * cpi), round_trips=trips_clocks, cpi=cpi),
                round_trips=[list(t) for t in ROUND_TRIPS],
                estimate_us=round(state_us, 2), issue_floor_us=round(floor_us, 2), apply_estimate_us=round(apply_us, 2),
                share_of_apply=round(state_us / apply_us, 4), share_of_forward=round(state_us / (state_us + apply_us), 4))


def _apply_time_us(shape, dtype) -> float:
    numel = math.prod(shape)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * numel * itemsize / BANDWIDTH * 1e6


# ---------------------------------------------------------------------------------------------
# Launch counts and host cost, with launches stubbed (CPU tensors stand in for device ones)
# ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _stubbed(counter: Optional[list] = None):
    """The backend serves CPU tensors through its device code path, launching nothing."""
    from ... import backends, cpp
    from .. import launch
    import camdrop_kernels.triton_backend as tb

    saved_select, saved_hook = backends.select, launch.HOOK
    backends.select = lambda device_type: tb
    launch.HOOK = (lambda plan, args: counter.append(plan.name)) if counter is not None else (lambda plan, args: None)
    saved_python = cpp.set_python_kernels(True)  # (the C++ CPU kernels hand the calls to the Python ones)
    try:
        yield
    finally:
        backends.select, launch.HOOK = saved_select, saved_hook
        cpp.set_python_kernels(saved_python)


_NO_LAUNCH = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view",
              "as_strided", "detach", "alias", "t", "transpose", "permute", "expand", "slice", "select",
              "unsqueeze", "squeeze", "lift_fresh", "_local_scalar_dense", "item", "set_", "resize_"}


def count_launches(shape=BENCH_SHAPE, dtype=BENCH_DTYPE) -> dict:
    """Kernel launches of one forward and one backward through the public API, counted on the
    CUDA code path: the backend's launches, and torch operations that would launch on a device
    (any operation touching a tensor of one or more dimensions, except allocation, views and
    host reads of CPU scalars)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import camdrop_kernels as ck

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func._overloadpacket.__name__
            if getattr(func, "namespace", "") == "camdrop_kernels":
                # Our ops are not launches themselves: run their CPU kernel with this mode active
                # again, so that what they run inside is counted.
                with self:
                    return func.redispatch(torch._C.DispatchKeySet(torch._C.DispatchKey.CPU), *args,
                                           **(kwargs or {}))
            tensors = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
            out = func(*args, **(kwargs or {}))
            outs = [a for a in torch.utils._pytree.tree_leaves(out) if isinstance(a, torch.Tensor)]
            if name not in _NO_LAUNCH and any(t.dim() > 0 for t in tensors + outs):
                self.ops.append(name)
            return out

    N, C, H, W = shape
    x = torch.empty(shape, dtype=dtype).requires_grad_()
    cam, alpha = torch.randn(N, H, W), torch.randn(N, C)
    dy = torch.empty(shape, dtype=dtype)
    result = {}
    kernels: list = []
    with _stubbed(kernels):
        y = ck.camdrop(x, cam, alpha, 0.1, 7)  # warm up: plans, the completion counter
        y.backward(dy)
        x.grad = None
        for phase in ("forward", "backward"):
            kernels.clear()
            mode = Ops()
            with mode:
                if phase == "forward":
                    y = ck.camdrop(x, cam, alpha, 0.1, 7)
                else:
                    y.backward(dy)
            result[phase] = len(kernels) + len(mode.ops)
            result[f"{phase}_detail"] = dict(kernels=list(kernels), torch_ops=list(mode.ops))
        x.grad = None
    return result


def _time(fn, repeat: int = 2000) -> float:
    for _ in range(min(200, repeat)):
        fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(repeat // 5):
            fn()
        best = min(best, (time.perf_counter() - t0) / (repeat // 5))
    return best * 1e6


def _forward_backward(ck, x, cam, alpha, dy) -> None:
    ck.camdrop(x, cam, alpha, 0.1, 7).backward(dy)
    x.grad = None  # (accumulating into an existing grad would add a CPU-side copy)


def host_us(shape=BENCH_SHAPE, dtype=BENCH_DTYPE) -> dict:
    """Microseconds of Python per call with launches stubbed (best of 5 batches)."""
    import camdrop_kernels as ck
    import camdrop_kernels.triton_backend as tb
    from ... import state
    from ...options import Options
    from ...philox import rate_tensor

    N, C, H, W = shape
    x = torch.empty(shape, dtype=dtype)
    cam, alpha = torch.randn(N, H, W), torch.randn(N, C)
    opts = Options.get(2, 7, None, None, "square", "batch", "eligible", 1.0)
    out = state.allocate(x, opts)
    y = torch.empty_like(x)
    seed, rate = torch.tensor(5, dtype=torch.int64), rate_tensor(0.1)
    xg = x.detach().requires_grad_()
    dy = torch.empty_like(x)
    with _stubbed():
        figures = dict(
            forward=_time(lambda: tb.forward(x, cam, alpha, seed, rate, opts, y, out)),
            backward=_time(lambda: tb.apply(dy, y, out[0], out[1], out[2])),
            public_forward=_time(lambda: ck.camdrop(x, cam, alpha, 0.1, 7), 1000),
            public_forward_backward=_time(lambda: _forward_backward(ck, xg, cam, alpha, dy), 500),
        )
    figures["cpu_allocation_of_y"] = _time(lambda: torch.empty_like(x), 1000)
    return {k: round(v, 2) for k, v in figures.items()}


def report(shape=BENCH_SHAPE, dtype=BENCH_DTYPE) -> dict:
    import triton

    kernels = _compile_variants(shape, dtype)
    launches = count_launches(shape, dtype)
    host = host_us(shape, dtype)
    apply_max = max(k["sass_per_element"] for k in kernels if k["name"].startswith("apply"))
    state_share = max(k["share_of_forward"] for k in kernels if k["name"] == "state")
    spills = sum(k["spills"] for k in kernels)
    states = [k for k in kernels if k["name"] == "state"]
    return dict(
        triton=triton.__version__, torch=torch.__version__, target="sm_90", shape=list(shape), dtype=str(dtype),
        kernels=kernels, launches=launches, host_us=host,
        targets={
            "launches (forward <= 2, backward <= 1)": launches["forward"] <= 2 and launches["backward"] <= 1,
            "host_us forward <= 40 (backend, launches stubbed)": host["forward"] <= 40,
            f"apply sass_per_element <= 0.6 (max {apply_max:.3f}), no spills": apply_max <= 0.6 and spills == 0,
            f"state model < 10% of the forward (max {100 * state_share:.1f}%)": state_share < 0.10,
            "state: no atomics, no ticket, <= 128 registers, no spills": all(
                k["atomics_static"] == 0 and k["regs"] <= 128 and k["spills"] == 0 for k in states),
        },
        model=dict(sms=SMS, clock_ghz=CLOCK_GHZ, bandwidth_bytes_per_s=BANDWIDTH,
                   round_trips=[list(t) for t in ROUND_TRIPS], calibration=calibration(),
                   trust=("estimate_us is the calibrated model: one CPI fitted to the OLD kernel (a chain of L2 "
                          "round trips: ncu saw 12.6 cycles a warp instruction, half of it L1TEX stalls); on that "
                          "kernel's held-out points it is off by up to the error above (more than the 25% asked). "
                          "Applied to the new kernel, whose instructions are mostly independent compares and "
                          "shuffles with no atomics and four round trips, it is an upper bound; issue_floor_us "
                          "(every instruction issued back to back) is the lower one. Trust the interval and the "
                          "ranking of the variants, not either end: a card decides.")),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the JSON object (default: a short table)")
    parser.add_argument("--triton-path", help="run under the triton installed in this directory")
    args = parser.parse_args(argv)
    if args.triton_path:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.triton_path] + sys.path), TRITON_INTERPRET="0")
        cmd = [sys.executable, "-m", "camdrop_kernels.triton_backend.tools.report"] + (["--json"] if args.json else [])
        return subprocess.call(cmd, env=env)
    # Compile afresh: a cached cubin keeps the line numbers (and paths) of the source it was built
    # from, and the estimate maps SASS to source lines.
    os.environ.setdefault("TRITON_ALWAYS_COMPILE", "1")
    from ..launch import INTERPRET

    if INTERPRET:
        print("report: unset TRITON_INTERPRET (it compiles for a GPU target)", file=sys.stderr)
        return 2
    result = report()
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(table(result))
    return 0


def table(result: dict) -> str:
    """A short Markdown table of a report."""
    lines = [f"triton {result['triton']}, {result['target']}, {tuple(result['shape'])} {result['dtype']}",
             "", "| kernel | variant | regs | spills | shared B | SASS/element | state estimate |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for k in result["kernels"]:
        spe = (f"{k['sass_per_element']:.3f} (plain {k['sass_per_element_plain']:.3f}, masked "
               f"{k['sass_per_element_masked']:.3f}, share {k['masked_share']:.2f})" if "sass_per_element" in k else "")
        est = (f"{k['instructions_per_warp']} instr/warp, {k['issue_floor_us']}-{k['estimate_us']} us = "
               f"{100 * k['share_of_apply']:.1f}% of apply ({k['apply_estimate_us']} us)"
               if k["name"] == "state" else "")
        lines.append(f"| {k['name']} | {k['variant']} | {k['regs']} | {k['spills']} | {k['shared_bytes']} | {spe} "
                     f"| {est} |")
    la, h = result["launches"], result["host_us"]
    lines += ["", f"launches: forward {la['forward']}, backward {la['backward']}",
              f"host us (launches stubbed): backend forward {h['forward']}, backward {h['backward']}; public call "
              f"forward {h['public_forward']}, forward+backward {h['public_forward_backward']} (CPU allocation of y "
              f"{h['cpu_allocation_of_y']})", ""]
    lines += [f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in result["targets"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
