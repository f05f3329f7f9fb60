"""Paired forward ratios at the ResNet shape (16, 256, 28, 28), block 7: camdrop in both gamma modes
against x * s, 80 interleaved rounds at 1 and 2 threads, for the tree PYTHONPATH picks (RESULTS.md)."""
import json, time, statistics, torch
import camdrop_kernels as ck
g = torch.Generator().manual_seed(0)
x = torch.randn(16, 256, 28, 28, generator=g); cam = torch.randn(16, 28, 28, generator=g); a = torch.randn(16, 256, generator=g)
s = torch.tensor(1.1)
out = {}
for threads in (1, 2):
    torch.set_num_threads(threads)
    fns = {"multiply": lambda: x * s, "eligible": lambda: ck.camdrop(x, cam, a, 0.1, 7),
           "dropblock": lambda: ck.camdrop(x, cam, a, 0.1, 7, gamma_mode="dropblock")}
    ts = {k: [] for k in fns}
    for f in fns.values():
        for _ in range(5): f()
    for _ in range(80):
        for k, f in fns.items():
            t0 = time.perf_counter(); f(); ts[k].append(time.perf_counter() - t0)
    out[threads] = {k: round(statistics.median([p / q for p, q in zip(ts[k], ts["multiply"])]), 3) for k in fns}
    out[f"{threads}_ms"] = {k: round(statistics.median(v) * 1e3, 3) for k, v in ts.items()}
print(json.dumps(out))
