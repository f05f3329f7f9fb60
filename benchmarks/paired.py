"""Paired ratios on the CPU: camdrop (both gamma modes) against the bare multiply and timm's coupled
DropBlock at the CPU benchmark shapes (forward, forward+backward, channels_last), and a tiny call
against F.dropout, called in turn in interleaved rounds. Each ratio is the median over rounds of a
contender's time over the first contender's in the same round, which cancels a shared VM's slow
spells (single medians drift 20-40% between minutes here, paired ratios about 10%). The block size
is convert's for the map's stage (3 at 7x7, 5 at 14x14, 7 above), and each forward prints the
share it dropped beside its time.

Usage: python benchmarks/paired.py [reps] [out.json] [threads]
"""
import json
import sys
import time

import torch
import torch.nn.functional as F
from timm.layers.drop import drop_block_2d

import camdrop_kernels as ck
from contenders import block_size_for, dropped_share


def interleaved(fns: dict, reps: int):
    """({name: median seconds}, {name: median over rounds of its time / the first's})."""
    ts = {k: [] for k in fns}
    for f in fns.values():
        for _ in range(3):
            f()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t0)
    first = next(iter(fns))
    ratios = {k: sorted(a / b for a, b in zip(ts[k], ts[first]))[reps // 2] for k in fns}
    return {k: sorted(v)[len(v) // 2] for k, v in ts.items()}, ratios


def make(shape, channels_last=False, grad=False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return (x.requires_grad_(grad), torch.randn(shape[0], *shape[2:], generator=g),
            torch.randn(shape[:2], generator=g))


def main(reps: int, threads: int) -> dict:
    out = {}
    torch.set_num_threads(threads)
    for shape in [(16, 256, 28, 28), (8, 512, 14, 14), (8, 1024, 7, 7)]:
        for cl in (False, True):
            if cl and shape != (16, 256, 28, 28):
                continue
            for kind in ("forward", "forward+backward"):
                x, cam, alpha = make(shape, cl, kind != "forward")
                s = torch.tensor(1.1)
                dy = torch.randn_like(x)

                def wrap(f, x=x, dy=dy, kind=kind):
                    return f if kind == "forward" else (lambda: torch.autograd.grad(f(), x, dy))

                b = block_size_for(shape)  # convert's block size for the map's stage: 3 at 7x7, 5 at 14x14
                fns = {"multiply": wrap(lambda: x * s),
                       "eligible": wrap(lambda: ck.camdrop(x, cam, alpha, 0.1, b, gamma_mode="eligible")),
                       "dropblock": wrap(lambda: ck.camdrop(x, cam, alpha, 0.1, b, gamma_mode="dropblock")),
                       "timm coupled": wrap(lambda: drop_block_2d(x, 0.1, b, couple_channels=True))}
                times, ratios = interleaved(fns, reps)
                with torch.no_grad():
                    dropped = {k: dropped_share(f()) for k, f in fns.items() if k != "multiply" and kind == "forward"}
                key = f"{kind} {'x'.join(map(str, shape))}{' CL' if cl else ''}"
                out[key] = dict({k: v * 1e3 for k, v in times.items()}, ratios=ratios, block_size=b, dropped=dropped)
                print(f"{key:32s} block {b}", " ".join(
                    f"{k} {v * 1e3:.3f}ms ({ratios[k]:.2f}x" + (f", {100 * dropped[k]:.2f}% dropped)" if k in dropped
                                                               else ")") for k, v in times.items()), flush=True)
    torch.set_num_threads(1)
    x, cam, alpha = make((2, 16, 8, 8))
    tiny = {"F.dropout": lambda: F.dropout(x, 0.1),
            "camdrop": lambda: ck.camdrop(x, cam, alpha, 0.1, 3, gamma_mode="eligible"),
            "camdrop dropblock": lambda: ck.camdrop(x, cam, alpha, 0.1, 3, gamma_mode="dropblock"),
            "timm coupled": lambda: drop_block_2d(x, 0.1, 3, couple_channels=True)}
    times, ratios = interleaved(tiny, reps * 20)
    dropped = {k: dropped_share(f()) for k, f in tiny.items()}
    out["tiny"] = dict({k: v * 1e6 for k, v in times.items()}, ratios=ratios, block_size=3, dropped=dropped)
    print("tiny (2,16,8,8) 1 thread, block 3", " ".join(f"{k} {v * 1e6:.1f}us ({ratios[k]:.2f}x, "
                                                      f"{100 * dropped[k]:.2f}% dropped)" for k, v in times.items()))
    out["bound layers"] = bound_layers(reps * 2)
    return out


def bound_layers(reps: int) -> dict:
    """Host cost per layer of a training forward+backward, one thread, tiny maps: nine bound
    CamDrop2d layers against nine nn.Dropout layers, each net of nine identity layers, in
    interleaved rounds (benchmarks/stage.py's model)."""
    sys.path.insert(0, __file__.rpartition("/")[0])
    try:
        from stage import bound_layer_rounds
    finally:
        sys.path.pop(0)  # (a path left behind would make "conftest" mean benchmarks/conftest.py)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 64, 7, 7, generator=g).requires_grad_()
    labels = torch.randint(0, 10, (8,), generator=g)
    per_layer = bound_layer_rounds(x, labels, reps)
    ratio = sorted(c / d for c, d in zip(per_layer["camdrop layers"], per_layer["dropout layers"]))[reps // 2]
    med = {k: sorted(v)[reps // 2] for k, v in per_layer.items()}
    print(f"bound layers, host us per layer per step (net of identity layers), 1 thread: camdrop "
          f"{med['camdrop layers']:.1f}, nn.Dropout {med['dropout layers']:.1f}; ratio {ratio:.2f}x")
    return dict(per_layer_us=med, ratio=ratio)


if __name__ == "__main__":
    result = main(int(sys.argv[1]) if len(sys.argv) > 1 else 100, int(sys.argv[3]) if len(sys.argv) > 3 else 2)
    if len(sys.argv) > 2:
        with open(sys.argv[2], "w") as f:
            json.dump(result, f, indent=1)
