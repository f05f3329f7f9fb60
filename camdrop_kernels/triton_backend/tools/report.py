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

The time model (a model, labelled as such): ``apply`` moves 2 * numel * itemsize bytes at
``BANDWIDTH`` (90% of an H100 SXM's 3.35 TB/s). ``state`` runs one wave of programs (one per SM
here): its time is the longest of its busiest SM's warp instructions at 4 per clock, one warp's
instructions at ``DEP_CLOCKS`` each (its dependent chain), and its L2 atomics at
``ATOMIC_RATE`` per clock (an assumption: nothing measured it here), plus its dependent
global-memory round trips (``ROUND_TRIPS``, latencies from public H100 microbenchmarks).
Instructions count code that runs on the benchmark's path: branches marked ``# cold`` in the
kernel source (ties at the n-th key, the last program's finish, rows longer than one step) are
left out, loops count their bodies times the trips the launch plan implies.

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
SMS = 132  # H100 SXM
CLOCK_GHZ = 1.755
BANDWIDTH = 0.9 * 3.35e12  # bytes/s
DEP_CLOCKS = 2  # a lone warp's dependent instructions issue at best every ~2 clocks on average
ATOMIC_RATE = 96  # L2 atomics per clock, device-wide (assumed: about one per L2 slice per clock)
# The state kernel's dependent global-memory round trips, in order, with their latencies in clocks
# (H100 microbenchmarks: L2 hit ~300, DRAM ~600; an atomic returning its value ~400; an acq_rel
# atomic at GPU scope waits for a fence, ~1000).
ROUND_TRIPS = (("cam and alpha rows (DRAM)", 600), ("pixel places (atomic, returned)", 400),
               ("pixel and channel lists read back (L2)", 300),
               ("runs read back for the dilation (L2)", 400), ("completion ticket (acq_rel)", 1000),
               ("last program: counts (L2)", 300))


def _compile_variants(shape, dtype) -> List[dict]:
    import importlib

    from . import compile_check as cc
    from .sass import Sass, source_regions

    sk = importlib.import_module(__package__ + ".state_kernel")  # the module (the package exports the kernel)

    out = []
    variants = [
        ("state", "eligible, float32 cam", dict(), "state"),
        ("state", "dropblock, float32 cam", dict(gamma_mode="dropblock"), "state"),
        ("apply_nchw", "forward, NCHW", dict(), "apply_forward"),
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
                     sass_instructions=len(sass.instrs), compile_s=round(time.perf_counter() - t0, 2),
                     constexprs={k: v for k, v in plan.constexprs.items() if not isinstance(v, bool) or v})
        if name == "state":
            entry.update(_state_estimate(plan, sass, loops, cold, shape, dtype, kw))
        else:
            entry.update(_apply_figures(plan, sass, shape))
        out.append(entry)
    return out


def _apply_figures(plan, sass, shape) -> dict:
    """Warp instructions per element along the plain and masked paths, and their weighted mean."""
    short, long_ = sass.paths()
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
    from ..options import Options

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


def _state_trips(plan, eligible: bool) -> Dict[str, float]:
    """Trips of each marked loop of the state kernel for one program of this plan (expected
    values where they depend on the data: every radix pass runs, seeds fire as gamma says)."""
    from .launch import cdiv

    info, ce = plan.info, plan.constexprs
    geo = info["geometry"]
    P, C, n = geo.P, geo.C, geo.top_pixels
    per_prog, words = info["planes_per_program"], geo.words
    valid_share = geo.num_valid / P
    eligible_lanes = min(per_prog, ce["PB"]) * min(n, ce["SB"]) * valid_share
    if eligible:
        gamma = min(1.0, 0.1 * C * P / (geo.area * geo.top_channels * max(1.0, n * valid_share)))
    else:
        gamma = min(1.0, 0.1 * P / (geo.area * geo.num_valid))
    any_fires = 1 - (1 - gamma) ** eligible_lanes
    nh = geo.rho + 1 if geo.options.block_shape == "diamond" else 1
    hs_words = nh * per_prog * (words + 2 * ce["GUARD"])
    return dict(
        radix_passes=max(ce["CAM_BITS"], ce["A_BITS"]) // 8, radix_pair_passes=ce["JBITS"] // 8,
        radix_chunks=max(cdiv(P, ce["CAM_BLOCK"]), cdiv(C, ce["A_BLOCK"])),
        channels=cdiv(C, ce["A_BLOCK"]), pixels=cdiv(P, ce["CAM_BLOCK"]), valid=cdiv(n, ce["SB"]) - 1,
        zero=cdiv(hs_words, ce["ZB"]), planes=cdiv(per_prog, ce["PB"]), seeds=cdiv(n, ce["SB"]),
        _gamma=gamma, runs=any_fires * nh, dilate=cdiv(per_prog * words, ce["ZB"]), rows_d=info["runs_d"],
        rows_h=info["runs_h"],
        finish=0, finish_programs=0, finish_scale=0,
    )


def _state_atomics(plan, trips, programs) -> float:
    """Expected L2 atomics of one launch: pixel places, histogram counts (Triton < 3.8), and the
    runs of the firing seeds (a run crosses into a second word with probability (width-1)/32)."""
    import importlib

    info, ce = plan.info, plan.constexprs
    geo = info["geometry"]
    n, per_prog, P = geo.top_pixels, info["planes_per_program"], geo.P
    eligible_pixels = n * geo.num_valid / P
    gamma = trips["_gamma"]
    width = 2 * geo.rho + 1 if geo.options.block_shape == "diamond" else geo.up[2] + geo.down[2] + 1
    nh = geo.rho + 1 if geo.options.block_shape == "diamond" else 1
    runs = per_prog * eligible_pixels * gamma * nh * (1 + min(1.0, (width - 1) / 32))
    hist = 0.0
    if importlib.import_module(__package__ + ".state_kernel").HIST_GLOBAL:
        # The first pass counts every entry; later ones only those still matching the prefix
        # (masked lanes issue nothing): assumed a tenth.
        hist = (1 + 0.1 * (trips["radix_pair_passes"] - 1)) * (P + geo.C)
    return programs * (n + hist + runs)


def _state_estimate(plan, sass, loops, cold, shape, dtype, kw) -> dict:
    import importlib

    from .sass import function_lines

    trips = _state_trips(plan, kw.get("gamma_mode", "eligible") == "eligible")
    # Functions only cold code calls: the last program's finish and, when both rows are ranked in
    # registers, the tie stage's radix select. (Triton 3.8 marks inlined code with its call sites,
    # so the "# cold" branches catch these; 3.6 does not.)
    callees = ["_finish"]
    if plan.constexprs["A_SINGLE"] and plan.constexprs["CAM_SINGLE"]:
        callees += ["_radix_select", "_radix_input", "_above"]
    cold = list(cold) + function_lines(importlib.import_module(__package__ + ".state_kernel").__file__, callees)
    per_warp, detail = sass.estimate({k: (loops[k], trips[k]) for k in loops}, cold)
    trips_shown = {k: round(v, 3) for k, v in trips.items() if not k.startswith("_")}
    programs = math.prod(plan.grid)
    per_sm = math.ceil(programs / SMS)
    issue = per_sm * plan.num_warps * per_warp / 4
    chain = per_sm * per_warp * DEP_CLOCKS
    round_trips = list(ROUND_TRIPS)
    sk = importlib.import_module(__package__ + ".state_kernel")
    if sk.HIST_GLOBAL:  # Triton < 3.8: each radix pass counts in L2 and reads the counts back
        round_trips.append(("radix passes' histograms in L2", 400 * trips["radix_pair_passes"]))
    trips_clocks = sum(c for _, c in round_trips)
    # L2 atomics of the mask build (the runs of firing seeds; issued while the programs compute).
    atomics = _state_atomics(plan, trips, programs)
    atomic_clocks = atomics / ATOMIC_RATE
    clocks = max(issue, chain, atomic_clocks) + trips_clocks
    state_us = clocks / (CLOCK_GHZ * 1e3)
    apply_us = _apply_time_us(shape, dtype)
    return dict(instructions_per_warp=round(per_warp), loops=detail, trips=trips_shown,
                programs_per_sm=per_sm, l2_atomics=round(atomics),
                clocks=dict(issue=round(issue), chain=round(chain), atomics=round(atomic_clocks),
                            round_trips=trips_clocks),
                round_trips=[list(t) for t in round_trips],
                estimate_us=round(state_us, 2), apply_estimate_us=round(apply_us, 2),
                share_of_apply=round(state_us / apply_us, 4))


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
    from .. import backends
    from . import launch
    import camdrop_kernels.triton_backend as tb

    saved_select, saved_hook, saved_sms = backends.select, launch.HOOK, tb.SMS_OVERRIDE
    backends.select = lambda device_type: tb
    launch.HOOK = (lambda plan, args: counter.append(plan.name)) if counter is not None else (lambda plan, args: None)
    tb.SMS_OVERRIDE = SMS
    try:
        yield
    finally:
        backends.select, launch.HOOK, tb.SMS_OVERRIDE = saved_select, saved_hook, saved_sms


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
    from .. import state
    from ..options import Options
    from ..philox import rate_tensor

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
    state_share = max(k["share_of_apply"] for k in kernels if k["name"] == "state")
    spills = sum(k["spills"] for k in kernels)
    return dict(
        triton=triton.__version__, torch=torch.__version__, target="sm_90", shape=list(shape), dtype=str(dtype),
        kernels=kernels, launches=launches, host_us=host,
        targets={
            "launches (forward <= 2, backward <= 1)": launches["forward"] <= 2 and launches["backward"] <= 1,
            "host_us forward <= 40 (backend, launches stubbed)": host["forward"] <= 40,
            f"apply sass_per_element <= 0.6 (max {apply_max:.3f}), no spills": apply_max <= 0.6 and spills == 0,
            f"state estimate < 10% of apply (max {100 * state_share:.1f}%)": state_share < 0.10,
        },
        model=dict(sms=SMS, clock_ghz=CLOCK_GHZ, bandwidth_bytes_per_s=BANDWIDTH, dep_clocks=DEP_CLOCKS,
                   atomic_rate_per_clock=ATOMIC_RATE,
                   round_trips=[list(t) for t in ROUND_TRIPS]),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the JSON object (default: a short table)")
    parser.add_argument("--triton-path", help="run under the triton installed in this directory")
    args = parser.parse_args(argv)
    if args.triton_path:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.triton_path] + sys.path), TRITON_INTERPRET="0")
        cmd = [sys.executable, "-m", "camdrop_kernels.triton_backend.report"] + (["--json"] if args.json else [])
        return subprocess.call(cmd, env=env)
    # Compile afresh: a cached cubin keeps the line numbers (and paths) of the source it was built
    # from, and the estimate maps SASS to source lines.
    os.environ.setdefault("TRITON_ALWAYS_COMPILE", "1")
    from .launch import INTERPRET

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
        est = (f"{k['instructions_per_warp']} instr/warp, {k['estimate_us']} us = "
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
