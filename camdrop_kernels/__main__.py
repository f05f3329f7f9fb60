"""``python -m camdrop_kernels``: a short self-demonstration on the available device.

Runs CamDrop on a random batch, prints what it selected and dropped, checks the
output bit for bit against the dense reference, and times CamDrop against the bare multiply
``x * scale`` in paired rounds on one thread (the ratio, with its spread).
"""
from __future__ import annotations

import argparse
import time
from typing import Callable, Dict, List, Tuple

import torch

import camdrop_kernels as ck
from camdrop_kernels import backends, cpp, reference
from camdrop_kernels.options import Options


def paired_rounds(fns: Dict[str, Callable[[], object]], rounds: int, sync: Callable[[], None] = lambda: None,
                  clock: Callable[[], float] = time.perf_counter) -> Dict[str, List[float]]:
    """Seconds per call of each function in ``rounds`` interleaved rounds: every round calls each
    once, in turn (the order reversed every other round), so a slow spell of a loaded machine falls
    on all of them alike and the per-round ratios cancel it. ``sync`` waits for the device."""
    names = list(fns)
    for name in names:  # warm up: caches, allocator, lazy initialisation
        for _ in range(3):
            fns[name]()
    sync()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t0 = clock()
            fns[name]()
            sync()
            times[name].append(clock() - t0)
    return times


def quantiles(values: List[float]) -> Tuple[float, float, float]:
    """(first quartile, median, third quartile), by linear interpolation."""
    ordered = sorted(values)

    def at(q: float) -> float:
        pos = q * (len(ordered) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(ordered) - 1)
        return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)

    return at(0.25), at(0.5), at(0.75)


def timing_line(x: torch.Tensor, camdrop_call: Callable[[], object], rounds: int) -> str:
    """camdrop against the bare multiply ``x * 1.5`` in paired rounds on one thread: the median ratio
    and its interquartile range (the absolute times move with the machine's load; the ratio holds)."""
    device = x.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = paired_rounds({"camdrop": camdrop_call, "multiply": lambda: x * 1.5}, rounds, sync)
    finally:
        torch.set_num_threads(threads)
    ratios = [a / b for a, b in zip(times["camdrop"], times["multiply"])]
    q1, median, q3 = quantiles(ratios)
    return (f"time per call (1 thread, {rounds} paired rounds): camdrop {quantiles(times['camdrop'])[1] * 1e3:.3f} ms, "
            f"bare x * scale {quantiles(times['multiply'])[1] * 1e3:.3f} ms (medians); camdrop / multiply "
            f"{median:.2f}x per round (interquartile {q1:.2f}-{q3:.2f}x)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m camdrop_kernels", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 128, 28, 28], metavar=("N", "C", "H", "W"))
    parser.add_argument("--drop-prob", type=float, default=0.1)
    parser.add_argument("--block-size", type=int, default=7)
    parser.add_argument("--seed", type=int, default=2019)
    parser.add_argument("--rounds", type=int, default=200, help="paired timing rounds (camdrop, then the multiply)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    N, C, H, W = args.shape
    x = torch.randn(N, C, H, W, generator=gen).to(device)
    alpha = torch.randn(N, C, generator=gen).to(device)
    cam = ck.class_activation_map(x, alpha)
    kw = dict(drop_prob=args.drop_prob, block_size=args.block_size, seed=args.seed)
    backend = backends.select(device.type).name
    detail = {"native": "native C++ kernels", "plain": "plain torch ops (no native extension built)",
              "triton": "Triton kernels"}.get(backend, backend)
    detail += ("; ops and autograd in C++ (camdrop_kernels._C)" if cpp.C is not None and device.type == "cpu"
               else "; ops in Python" if device.type == "cpu" else "")
    geo = Options.get(2, args.block_size, None, None, "square", "batch", "eligible", 1.0).geometry(C, (H, W))
    print(f"camdrop_kernels {ck.__version__} | torch {torch.__version__} | device {device} | backend: {detail}")
    print(f"x {tuple(x.shape)} float32, drop_prob {args.drop_prob}, block_size {args.block_size}, seed {args.seed}")
    print(f"selected per sample: {geo.top_pixels} of {H * W} pixels (top of the CAM), "
          f"{geo.top_channels} of {C} channels (top of alpha)")

    y = ck.camdrop(x, cam, alpha, **kw)
    mask = ck.camdrop_mask(x, cam, alpha, **kw)
    print(f"dropped: {mask.float().mean().item():.4%} of x, "
          f"{mask.flatten(2).any(2).sum().item()} of {N * C} channels touched")

    t0 = time.perf_counter()
    ref = reference.camdrop(x.cpu(), cam.cpu(), alpha.cpu(), **kw)
    t_ref = time.perf_counter() - t0
    same = torch.equal(y.cpu().view(torch.int32), ref.view(torch.int32))
    print(f"output equals the reference bit for bit: {'yes' if same else 'NO'} (the dense reference took "
          f"{t_ref * 1e3:.0f} ms on the CPU)")

    print(timing_line(x, lambda: ck.camdrop(x, cam, alpha, **kw), args.rounds))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
