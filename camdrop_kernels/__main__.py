"""``python -m camdrop_kernels``: a short self-demonstration on the available device.

Runs CamDrop on a random batch, prints what it selected and dropped, checks the
output bit for bit against the dense reference, and times both.
"""
from __future__ import annotations

import argparse
import time

import torch

import camdrop_kernels as ck
from camdrop_kernels import backends, reference
from camdrop_kernels.options import Options


def _time(fn, device: torch.device, repeat: int) -> float:
    """Median seconds per call (synchronising on CUDA)."""
    fn()
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m camdrop_kernels", description=__doc__)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", type=int, nargs=4, default=[8, 128, 28, 28], metavar=("N", "C", "H", "W"))
    parser.add_argument("--drop-prob", type=float, default=0.1)
    parser.add_argument("--block-size", type=int, default=7)
    parser.add_argument("--seed", type=int, default=2019)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    N, C, H, W = args.shape
    x = torch.randn(N, C, H, W, generator=gen).to(device)
    alpha = torch.randn(N, C, generator=gen).to(device)
    cam = ck.class_activation_map(x, alpha)
    kw = dict(drop_prob=args.drop_prob, block_size=args.block_size, seed=args.seed)
    backend = backends.select(device.type).name
    detail = {"native": "native C kernels", "plain": "plain torch ops (no C extension built)",
              "triton": "Triton kernels"}.get(backend, backend)
    geo = Options.get(2, args.block_size, None, None, "square", "batch", "eligible", 1.0).geometry(C, (H, W))
    print(f"camdrop_kernels {ck.__version__} | torch {torch.__version__} | device {device} | backend: {detail}")
    print(f"x {tuple(x.shape)} float32, drop_prob {args.drop_prob}, block_size {args.block_size}, seed {args.seed}")
    print(f"selected per sample: {geo.top_pixels} of {H * W} pixels (top of the CAM), "
          f"{geo.top_channels} of {C} channels (top of alpha)")

    y = ck.camdrop(x, cam, alpha, **kw)
    mask = ck.camdrop_mask(x, cam, alpha, **kw)
    print(f"dropped: {mask.float().mean().item():.4%} of x, "
          f"{mask.flatten(2).any(2).sum().item()} of {N * C} channels touched")

    ref = reference.camdrop(x.cpu(), cam.cpu(), alpha.cpu(), **kw)
    same = torch.equal(y.cpu().view(torch.int32), ref.view(torch.int32))
    print(f"output equals the reference bit for bit: {'yes' if same else 'NO'}")

    t_fast = _time(lambda: ck.camdrop(x, cam, alpha, **kw), device, 20)
    t_ref = _time(lambda: reference.camdrop(x, cam, alpha, **kw), device, 3)
    t_mul = _time(lambda: x * 1.5, device, 20)
    print(f"time per call: camdrop {t_fast * 1e3:.3f} ms | reference {t_ref * 1e3:.3f} ms "
          f"({t_ref / t_fast:.1f}x slower) | bare x * scale {t_mul * 1e3:.3f} ms")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
