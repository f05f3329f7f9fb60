"""End-to-end check for benchmarks/gpu_check.sh: one training step of timm's resnet50 in bfloat16
autocast, channels_last, batch 128 at 224 x 224, three ways: plain; with CamDrop through
``ck.convert_resnet`` (its defaults); with timm's own ``drop_block_rate=0.1``. Step time from CUDA
events (median of the timed steps after warm-up), peak memory, and the ratio to the plain step.
``CAMDROP_GPU_DRY_RUN=1``: the same on the CPU in float32 at batch 2, 32 x 32, one timed step (the smoke
test's check that the script works; its figures mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

import camdrop_kernels as ck

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_bench import DEVICE, DRY_RUN, Clock, device_name, sync  # noqa: E402


def make(kind: str):
    import timm

    kw = dict(drop_block_rate=0.1) if kind == "timm drop_block_rate=0.1" else {}
    model = timm.create_model("resnet50", num_classes=1000, **kw)
    if kind == "camdrop (convert_resnet defaults)":
        ck.convert_resnet(model)
    return model.to(DEVICE).to(memory_format=torch.channels_last).train()


def step_times(kind: str, batch: int, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    model = make(kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    size = 32 if DRY_RUN else 224
    images = torch.randn(batch, 3, size, size, device=DEVICE).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=DEVICE)
    camdrop = kind.startswith("camdrop")

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=not DRY_RUN):  # (bf16 is slow on CPUs)
            if camdrop:
                with ck.targets(model, labels):
                    loss = F.cross_entropy(model(images), labels)
            else:
                loss = F.cross_entropy(model(images), labels)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync()
    if not DRY_RUN:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps):
        start, end = Clock(), Clock()
        start.record()
        step()
        end.record()
        times.append(start.elapsed_ms(end))
    result = dict(step_ms=statistics.median(times), steps_ms=times,
                  peak_gib=0.0 if DRY_RUN else torch.cuda.max_memory_allocated() / 2**30)
    if camdrop:
        result["dropped"] = str(ck.dropped_summary(model))
    del model, opt
    if not DRY_RUN:
        torch.cuda.empty_cache()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args(argv)
    if DRY_RUN:
        args.batch, args.warmup, args.steps = 2, 1, 1
    kinds = ("plain", "camdrop (convert_resnet defaults)", "timm drop_block_rate=0.1")
    results = {}
    for kind in kinds:
        try:
            results[kind] = step_times(kind, args.batch, args.warmup, args.steps)
        except Exception as exc:  # keep the other figures
            results[kind] = dict(error=f"{type(exc).__name__}: {str(exc)[:300]}")
        r = results[kind]
        print(f"{kind:36s} " + (f"{r['step_ms']:8.2f} ms/step  peak {r['peak_gib']:.1f} GiB" if "step_ms" in r
                                 else r["error"]), flush=True)
    plain = results["plain"].get("step_ms")
    for kind in kinds[1:]:
        if plain and "step_ms" in results[kind]:
            results[kind]["vs_plain"] = results[kind]["step_ms"] / plain
    out = dict(device=device_name(), torch=torch.__version__, batch=args.batch, results=results,
               target=dict(text="camdrop step <= 1.02 x plain",
                           value=results[kinds[1]].get("vs_plain"),
                           met=(results[kinds[1]].get("vs_plain") or 9) <= 1.02))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    print(f"camdrop / plain: {out['target']['value']}  ({'met' if out['target']['met'] else 'MISS'}: <= 1.02)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
