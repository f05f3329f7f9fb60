"""Host/CPU figures for one tree (PYTHONPATH picks it): paired ratios in interleaved rounds, 1 thread.
Prints JSON: tiny call / F.dropout, bound layer per-layer host cost / nn.Dropout's (net of identity
layers), forward at (16,256,28,28) / x*s, the share dropped."""
import json, time, statistics
import torch, torch.nn.functional as F
torch.set_num_threads(1)
import camdrop_kernels as ck
from stage import bound_layer_rounds  # (this script's folder is on sys.path)

def rounds(fns, reps, inner):
    ts = {k: [] for k in fns}
    for f in fns.values():
        for _ in range(inner * 3): f()
    for _ in range(reps):
        for k, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(inner): f()
            ts[k].append((time.perf_counter() - t0) / inner)
    return ts

def ratio(ts, a, b):
    return statistics.median([x / y for x, y in zip(ts[a], ts[b])])

out = {"tree": ck.__file__}
g = torch.Generator().manual_seed(0)
x = torch.randn(2, 16, 8, 8, generator=g); cam = torch.randn(2, 8, 8, generator=g); alpha = torch.randn(2, 16, generator=g)
ts = rounds({"F.dropout": lambda: F.dropout(x, 0.1), "camdrop": lambda: ck.camdrop(x, cam, alpha, 0.1, 3)}, 60, 200)
out["tiny_us"] = {k: statistics.median(v) * 1e6 for k, v in ts.items()}
out["tiny_ratio"] = ratio(ts, "camdrop", "F.dropout")
xg = x.clone().requires_grad_(); dy = torch.ones_like(x); d = torch.nn.Dropout(0.1)
ts = rounds({"dropout": lambda: d(xg).backward(dy), "camdrop": lambda: ck.camdrop(xg, cam, alpha, 0.1, 3).backward(dy)}, 60, 100)
out["tiny_fwd_bwd_us"] = {k: statistics.median(v) * 1e6 for k, v in ts.items()}
out["tiny_fwd_bwd_ratio"] = ratio(ts, "camdrop", "dropout")

for shape in [(8, 64, 7, 7), (2, 16, 8, 8)]:
    xs = torch.randn(*shape, generator=g).requires_grad_()
    labels = torch.randint(0, 10, (shape[0],), generator=g)
    per = bound_layer_rounds(xs, labels, 40, inner=10, warm=30)  # (benchmarks/stage.py's nine-layer model)
    key = "x".join(map(str, shape))
    out[f"bound_{key}_us_per_layer"] = {k.split()[0]: statistics.median(v) for k, v in per.items()}
    out[f"bound_{key}_ratio"] = statistics.median([c / d for c, d in zip(per["camdrop layers"],
                                                                         per["dropout layers"])])

torch.set_num_threads(2)
xb = torch.randn(16, 256, 28, 28, generator=g); camb = torch.randn(16, 28, 28, generator=g); ab = torch.randn(16, 256, generator=g)
s = torch.tensor(1.1)
fns = {"multiply": lambda: xb * s, "eligible": lambda: ck.camdrop(xb, camb, ab, 0.1, 7),
       "dropblock": lambda: ck.camdrop(xb, camb, ab, 0.1, 7, gamma_mode="dropblock")}
ts = rounds(fns, 30, 3)
out["resnet_16x256x28x28_2threads"] = {k: ratio(ts, k, "multiply") for k in fns}
with torch.no_grad():
    out["resnet_dropped"] = {k: float((fns[k]() == 0).float().mean()) for k in ("eligible", "dropblock")}
print(json.dumps(out))
