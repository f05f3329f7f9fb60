"""Second-look probe for a card (issue 14), after gpu_check.sh: where the eager host time goes,
what the state kernel's time depends on, and why the resnet50 step costs what it does.

    OUT=dir python benchmarks/gpu_probe.py [host] [state] [resnet]

1. host: per-call host time (perf_counter, no sync; small tensors, so the card keeps up) of the
   public call, its forward+backward, the state op, the apply op, the bare Triton launches, and a
   clone and a multiply beside them; then a cProfile of the forward+backward (top functions).
2. state: the state kernel alone (CUDA-graph replays of 20 launches) at the bench shape and the
   resnet50 stage-3/4 shapes, for launch variants (warps, programs per sample) and for options
   that shrink one stage (top_pixels / top_channels tiny): differences place the time.
3. resnet: timm resnet50 bf16 channels_last batch 128, convert_resnet defaults: the first host
   sync of a step (sync debug mode "error", with its Python stack), host enqueue time against
   step time for plain and camdrop, and a torch.profiler table of two camdrop steps.

``CAMDROP_GPU_DRY_RUN=1``: the same on the CPU at tiny sizes (Triton interpreter), to check the
script itself. Figures go to stdout and $OUT/probe.json.
"""
from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import camdrop_kernels as ck  # noqa: E402
from camdrop_kernels import ops  # noqa: E402
from camdrop_kernels.triton_backend import plan as tb  # noqa: E402
from camdrop_kernels.options import Options  # noqa: E402
from gpu_bench import DEVICE, DRY_RUN, sync  # noqa: E402

OUT = os.environ.get("OUT", ".")
RESULTS: dict = {}


def host_us(fn, n: int) -> float:
    """Host microseconds per call, n calls back to back (then one sync, not timed)."""
    for _ in range(5):
        fn()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    sync()
    return dt / n * 1e6


def probe_host() -> None:
    shape = (2, 8, 8, 8) if DRY_RUN else (8, 64, 14, 14)
    n = 20 if DRY_RUN else 300
    g = torch.Generator(device=DEVICE).manual_seed(0)
    x = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16, generator=g)
    xg = x.clone().requires_grad_()
    dy = torch.randn_like(x)
    cam = torch.randn((shape[0],) + shape[2:], device=DEVICE, generator=g)
    alpha = torch.randn(shape[:2], device=DEVICE, generator=g)
    opts = Options.get(2, 7, None, None, "square", "batch", "eligible", 1.0)
    seed, rate = torch.tensor(1234), torch.tensor([0.1], dtype=torch.float64)
    rate_dev = rate.to(DEVICE)
    state = ops.build_state(x, cam, alpha, seed, rate, opts)
    scale = torch.tensor(1.1, device=DEVICE, dtype=torch.bfloat16)
    rows = {
        "x.clone()": lambda: x.clone(),
        "x * scale (0-d tensor)": lambda: x * scale,
        "F.dropout": lambda: F.dropout(x, 0.1, training=True),
        "ck.camdrop forward": lambda: ck.camdrop(x, cam, alpha, 0.1, 7),
        "ck.camdrop fwd+bwd": lambda: torch.autograd.grad(ck.camdrop(xg, cam, alpha, 0.1, 7), xg, dy),
        "multiply fwd+bwd": lambda: torch.autograd.grad(xg * scale, xg, dy),
        "ops.build_state (cpu rate)": lambda: ops.build_state(x, cam, alpha, seed, rate, opts),
        "ops.build_state (device rate)": lambda: ops.build_state(x, cam, alpha, seed, rate_dev, opts),
        "ops.camdrop_apply": lambda: ops.camdrop_apply(x, *state[:3]),
    }
    if not DRY_RUN:
        out = tuple(torch.empty_like(t) for t in state)
        plan, args, index = tb.state_launch(x, cam, alpha, seed, rate, opts, out)
        rows["raw state launch"] = lambda: plan.launch(args, index)
        y = torch.empty_like(x)
        aplan, aargs, aindex = tb.apply_launch(x, y, *state[:3])
        rows["raw apply launch"] = lambda: aplan.launch(aargs, aindex)
        rows["tb.state_launch (plan lookup, no launch)"] = lambda: tb.state_launch(x, cam, alpha, seed, rate, opts, out)
        rows["torch.empty x5"] = lambda: [torch.empty_like(t) for t in state]
    res = {}
    for name, fn in rows.items():
        try:
            res[name] = round(host_us(fn, n), 1)
        except Exception as exc:
            res[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
        print(f"  host {name:42s} {res[name]} us", flush=True)
    RESULTS["host_us"] = res
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        torch.autograd.grad(ck.camdrop(xg, cam, alpha, 0.1, 7), xg, dy)
    prof.disable()
    sync()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(28)
    text = s.getvalue()
    with open(os.path.join(OUT, "probe_cprofile.txt"), "w") as f:
        f.write(f"{n} calls of ck.camdrop fwd+bwd at {shape} bf16\n" + text)
    print("\n".join(text.splitlines()[:45]), flush=True)


def graph_us(fn, launches: int = 20) -> float:
    """Device microseconds per call: median of CUDA-graph replays of ``launches`` calls."""
    if DRY_RUN:
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e6
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(launches):
            fn()
    times = []
    for _ in range(15):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / launches)
    return statistics.median(times)


def probe_state() -> None:
    shapes = [(2, 16, 12, 12)] if DRY_RUN else [(64, 256, 56, 56), (128, 1024, 14, 14), (128, 2048, 7, 7)]
    # One program per sample (no knobs left: the old grid and warp variants are gone with the ticket).
    # normalize="batch" times build_state alone: the state kernel and the one-program finish kernel.
    # (name, plan-module attributes, options): 512 threads a program is a knob only a card can judge
    # (RESULTS.md: 22% fewer instructions a warp, 56% more a program, twice the warps to hide latency)
    variants = [("base", {}, {}), ("512 threads", dict(STATE_THREADS=512), {}),
                ("512 threads, cam bf16 ties", dict(STATE_THREADS=512), dict(cam_dtype=torch.bfloat16, ties=True))]
    opt_variants = [("top_pixels=1", dict(top_pixels=1)), ("top_channels=1", dict(top_channels=1)),
                    ("both tiny", dict(top_pixels=1, top_channels=1)), ("dropblock", dict(gamma_mode="dropblock")),
                    ("normalize=sample", dict(normalize="sample")),
                    # 16-bit keys: half the radix passes (a bound layer under bf16 autocast hands over
                    # a bf16 cam; alpha stays float32, the classifier's dtype)
                    ("cam bf16", dict(cam_dtype=torch.bfloat16)),
                    ("cam+alpha bf16", dict(cam_dtype=torch.bfloat16, alpha_dtype=torch.bfloat16)),
                    # the bound layer's real case: a bf16 CAM of few levels, tied at the n-th value
                    ("cam bf16 ties", dict(cam_dtype=torch.bfloat16, ties=True)),
                    ("cam bf16 ties, sample", dict(cam_dtype=torch.bfloat16, ties=True, normalize="sample"))]
    if DRY_RUN:
        variants, opt_variants = variants[:2], opt_variants[:1] + opt_variants[-2:]
    saved = {}
    res = {}
    for shape in shapes:
        g = torch.Generator(device=DEVICE).manual_seed(1)
        x = torch.randn(shape, device=DEVICE, dtype=torch.bfloat16, generator=g)
        cam = torch.randn((shape[0],) + shape[2:], device=DEVICE, generator=g)
        alpha = torch.randn(shape[:2], device=DEVICE, generator=g)
        seed, rate = torch.tensor(99), torch.tensor([0.1], dtype=torch.float64)
        base_kw = dict(top_pixels=None, top_channels=None, normalize="batch", gamma_mode="eligible")
        # (variants differing only in dtypes or run-time flags share the default's plan key pieces)
        todo = list(variants) + [(name, {}, kw) for name, kw in opt_variants]
        for name, over, kw in todo:
            k = dict(base_kw, **kw)
            opts = Options.get(2, 7, k["top_pixels"], k["top_channels"], "square", k["normalize"], k["gamma_mode"], 1.0)
            cam_k = (torch.round(cam * 2) / 2 if kw.get("ties") else cam).to(kw.get("cam_dtype", cam.dtype))
            alpha_k = alpha.to(kw.get("alpha_dtype", alpha.dtype))
            try:
                for attr, value in over.items():
                    saved[attr] = getattr(tb, attr)  # (restored below)
                    setattr(tb, attr, value)
                tb.STATE_PLANS.clear()
                ref = ops.build_state(x, cam_k, alpha_k, seed, rate, opts)
                us = graph_us(lambda: ops.build_state(x, cam_k, alpha_k, seed, rate, opts))
                got = ops.build_state(x, cam_k, alpha_k, seed, rate, opts)
                same = all(torch.equal(a, b) for a, b in zip(ref[:3], got[:3]))
                plan = next(iter(tb.STATE_PLANS.values()), None)  # (none in a dry run: the native backend)
                res[f"{shape} {name}"] = dict(us=round(us, 2), grid=plan and plan.grid[0], warps=plan and plan.num_warps,
                                              repeatable=same, dropped=round(float(ref[3].sum()) / x.numel(), 4))
            except Exception as exc:
                res[f"{shape} {name}"] = dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")
            finally:
                for attr, value in saved.items():
                    setattr(tb, attr, value)
                saved.clear()
                tb.STATE_PLANS.clear()
            print(f"  state {shape} {name:18s} {res[f'{shape} {name}']}", flush=True)
    RESULTS["state"] = res


def probe_resnet() -> None:
    import timm

    batch, size = (2, 32) if DRY_RUN else (128, 224)
    images = torch.randn(batch, 3, size, size, device=DEVICE).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=DEVICE)
    res = {}
    for kind in ("plain", "camdrop"):
        torch.manual_seed(0)
        model = timm.create_model("resnet50", num_classes=1000)
        if kind == "camdrop":
            ck.convert_resnet(model)
            res["layers"] = [(n, type(m).__name__) for n, m in model.named_modules() if isinstance(m, ck.CamDrop2d)]
        model = model.to(DEVICE).to(memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=not DRY_RUN):
                if kind == "camdrop":
                    with ck.targets(model, labels):
                        loss = F.cross_entropy(model(images), labels)
                else:
                    loss = F.cross_entropy(model(images), labels)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        sync()
        if not DRY_RUN:
            torch.cuda.set_sync_debug_mode("error")
            try:
                step()
                res[f"{kind} first sync"] = None
            except Exception:
                res[f"{kind} first sync"] = traceback.format_exc()[-3000:]
            finally:
                torch.cuda.set_sync_debug_mode("default")
            sync()
            import warnings
            torch.cuda.set_sync_debug_mode("warn")
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                step()
            torch.cuda.set_sync_debug_mode("default")
            res[f"{kind} sync warnings"] = len([w for w in caught if "ynchroniz" in str(w.message)])
            sync()
        enqueue, total = [], []
        for _ in range(2 if DRY_RUN else 6):
            sync()
            t = time.perf_counter()
            step()
            enqueue.append((time.perf_counter() - t) * 1e3)
            sync()
            total.append((time.perf_counter() - t) * 1e3)
        res[f"{kind} host enqueue ms"] = round(statistics.median(enqueue), 2)
        res[f"{kind} step ms (synced)"] = round(statistics.median(total), 2)
        print(f"  resnet {kind}: enqueue {res[f'{kind} host enqueue ms']} ms, step {res[f'{kind} step ms (synced)']} ms, "
              f"first sync: {'none' if not res.get(f'{kind} first sync') else 'FOUND'}", flush=True)
        if res.get(f"{kind} first sync"):
            print(res[f"{kind} first sync"][-1500:], flush=True)
        if kind == "camdrop" and not DRY_RUN:
            from torch.profiler import ProfilerActivity, profile
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(2):
                    step()
                sync()
            ka = prof.key_averages()
            tables = []
            for key in ("self_device_time_total", "self_cuda_time_total", "self_cpu_time_total"):
                try:
                    tables.append(f"--- sorted by {key}\n" + ka.table(sort_by=key, row_limit=30, max_name_column_width=60))
                except Exception as exc:
                    tables.append(f"--- {key}: {type(exc).__name__}: {exc}")
            text = "\n".join(tables)
            with open(os.path.join(OUT, "probe_profile.txt"), "w") as f:
                f.write(text)
            print("\n".join(tables[0].splitlines()[:40]), flush=True)
        del model, opt
    RESULTS["resnet"] = res


def main() -> int:
    which = sys.argv[1:] or ["host", "state", "resnet"]
    os.makedirs(OUT, exist_ok=True)
    if not DRY_RUN:
        RESULTS["device"] = torch.cuda.get_device_name()
    for name in which:
        t = time.perf_counter()
        print(f"=== {name}", flush=True)
        try:
            {"host": probe_host, "state": probe_state, "resnet": probe_resnet}[name]()
        except Exception:
            RESULTS[f"{name} error"] = traceback.format_exc()[-2000:]
            print(RESULTS[f"{name} error"], flush=True)
        print(f"=== {name}: {time.perf_counter() - t:.1f}s", flush=True)
        with open(os.path.join(OUT, "probe.json"), "w") as f:
            json.dump(RESULTS, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
