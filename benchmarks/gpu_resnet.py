"""End-to-end check for benchmarks/gpu_check.sh: one training step of timm's resnet50 in bfloat16
autocast, channels_last, batch 128 at 224 x 224, three ways: plain; with CamDrop through
``ck.convert_resnet`` (its defaults); with timm's own ``drop_block_rate=0.1``.

The three models step in turn, round after round (the order rotating), so that a host whose speed
drifts (the first card's varied 1.6x between runs) slows them alike: each round gives a ratio to
the plain step, and the figure is the median ratio. Per variant: the step's CUDA-event time
(back to back, as a training loop runs), the host time to enqueue it (what bounds an eager step
when the host is slower than the card), and peak memory. ``--compile`` times the models under
``torch.compile`` instead (one compile each, outside the timing).
``CAMDROP_GPU_DRY_RUN=1``: the same on the CPU in float32 at batch 2, 32 x 32, two rounds, and
``--compile`` with dynamo's "eager" backend (the smoke test's check that the script works; its
figures mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import camdrop_kernels as ck

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import DEVICE, DRY_RUN, Clock, device_name, sync  # noqa: E402


KINDS = ("plain", "camdrop (convert_resnet defaults)", "timm drop_block_rate=0.1")


def make(kind: str):
    import timm

    kw = dict(drop_block_rate=0.1) if kind == "timm drop_block_rate=0.1" else {}
    model = timm.create_model("resnet50", num_classes=1000, **kw)
    if kind == "camdrop (convert_resnet defaults)":
        ck.convert_resnet(model)
    return model.to(DEVICE).to(memory_format=torch.channels_last).train()


def stepper(kind: str, batch: int, compile_model: bool):
    """A function running one training step of this variant (model, optimizer and batch inside)."""
    torch.manual_seed(0)
    model = make(kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    size = 32 if DRY_RUN else 224
    images = torch.randn(batch, 3, size, size, device=DEVICE).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=DEVICE)
    camdrop = kind.startswith("camdrop")
    run = torch.compile(model, backend="eager" if DRY_RUN else "inductor") if compile_model else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=not DRY_RUN):  # (bf16 is slow on CPUs)
            if camdrop:
                with ck.targets(model, labels):
                    loss = F.cross_entropy(run(images), labels)
            else:
                loss = F.cross_entropy(run(images), labels)
        loss.backward()
        opt.step()

    step.model = model
    return step


def interleaved(batch: int, warmup: int, rounds: int, compile_model: bool, kinds=KINDS) -> dict:
    """{kind: result}: the variants stepped in turn, ``rounds`` times after ``warmup`` steps each."""
    results = {kind: dict(steps_ms=[], host_ms=[]) for kind in kinds}
    steps = {}
    for kind in kinds:
        try:
            steps[kind] = stepper(kind, batch, compile_model)
            for _ in range(warmup):
                steps[kind]()
        except Exception as exc:  # keep the other figures
            results[kind] = dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")
            steps.pop(kind, None)
    sync()
    if not DRY_RUN:
        torch.cuda.reset_peak_memory_stats()
    live = [kind for kind in kinds if kind in steps]
    for r in range(rounds):
        for kind in live[r % len(live):] + live[:r % len(live)]:
            start, end = Clock(), Clock()
            start.record()
            t = time.perf_counter()
            steps[kind]()
            host = (time.perf_counter() - t) * 1e3
            end.record()
            results[kind]["steps_ms"].append(start.elapsed_ms(end))
            results[kind]["host_ms"].append(host)
    peak = 0.0 if DRY_RUN else torch.cuda.max_memory_allocated() / 2**30
    plain = results["plain"].get("steps_ms")
    for kind in live:
        res = results[kind]
        res["step_ms"] = statistics.median(res["steps_ms"])
        res["host_ms_median"] = statistics.median(res["host_ms"])
        res["peak_gib_all"] = peak
        if plain and kind != "plain":
            ratios = [a / b for a, b in zip(res["steps_ms"], plain)]
            res["vs_plain"] = statistics.median(ratios)
            res["vs_plain_range"] = (min(ratios), max(ratios))
        if kind.startswith("camdrop"):
            res["dropped"] = str(ck.dropped_summary(steps[kind].model))
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="torch.compile each model (timed after it compiles)")
    parser.add_argument("--skip-timm", action="store_true", help="leave out timm's DropBlock (saves a compile)")
    args = parser.parse_args(argv)
    if DRY_RUN:
        args.batch, args.warmup, args.rounds = 2, 1, 2
    kinds = KINDS[:2] if args.skip_timm else KINDS
    results = interleaved(args.batch, args.warmup, args.rounds, args.compile, kinds)
    for kind, r in results.items():
        print(f"{kind:36s} " + (f"{r['step_ms']:8.2f} ms/step  host {r['host_ms_median']:6.2f} ms/step"
                                 + (f"  {r['vs_plain']:.3f}x plain (rounds {r['vs_plain_range'][0]:.3f}-"
                                    f"{r['vs_plain_range'][1]:.3f})" if "vs_plain" in r else "")
                                 if "step_ms" in r else r["error"]), flush=True)
    camdrop = results[KINDS[1]].get("vs_plain")
    out = dict(device=device_name(), torch=torch.__version__, batch=args.batch, compiled=args.compile,
               results=results, target=dict(text="camdrop step <= 1.02 x plain" + (" (compiled)" if args.compile else ""),
                                            value=camdrop, met=(camdrop or 9) <= 1.02))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    print(f"camdrop / plain: {camdrop}  ({'met' if out['target']['met'] else 'MISS'}: <= 1.02)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
