"""Time and memory of CamDrop against its floor and its peers, per (pass, shape, dtype, layout), with
the share of x each contender actually dropped beside its time.

Groups compare like with like; the summary after the run gives GB/s, percent of the copy's
bandwidth, ratios to the bare multiply, speedups over each peer, the share dropped, and the
bytes autograd saves for backward (and peak memory on CUDA).
"""
import pytest
import torch
import torch.nn.functional as F

import camdrop_kernels as ck

from cases import TINY, main_cases, nd_cases
from conftest import DEVICE, SMOKE, make_inputs, saved_bytes, timed
from contenders import contenders, dropped_share

FACTORIES = {rank: contenders(DEVICE, rank) for rank in (1, 2, 3)}


def _id(case):
    name, shape, dtype, layout, p = case
    return f"{p}-{'x'.join(map(str, shape))}-{str(dtype).replace('torch.', '')}-{layout}-{name}"


def group_key(p, shape, dtype, layout):
    return f"{p} | {'x'.join(map(str, shape))} | {str(dtype).replace('torch.', '')} | {layout}"


def _info(name, p, shape, dtype, layout, x, share):
    x_bytes = x.numel() * x.element_size()
    return dict(contender=name, **{"pass": p}, shape=list(shape), dtype=str(dtype), layout=layout, x_bytes=x_bytes,
                bytes=(4 if p == "forward+backward" else 2) * x_bytes, dropped_share=share)


@pytest.mark.parametrize("case", main_cases(), ids=_id)
def test_throughput(benchmark, case):
    name, shape, dtype, layout, p = case
    backward = p == "forward+backward"
    x, cam, alpha = make_inputs(shape, dtype, layout, requires_grad=backward)
    forward = FACTORIES[2][name](x, cam, alpha)
    with torch.no_grad():
        share = dropped_share(forward())
    info = _info(name, p, shape, dtype, layout, x, share)
    if backward:
        dy = torch.randn_like(x)

        def fn():
            return torch.autograd.grad(forward(), x, dy)

        info["saved_bytes"] = saved_bytes(forward)
        if DEVICE.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            torch.cuda.synchronize()
            info["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    else:
        fn = forward
    timed(benchmark, fn, group=group_key(p, shape, dtype, layout), info=info)


@pytest.mark.parametrize("name,shape", nd_cases(), ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
def test_other_ranks(benchmark, name, shape):
    """1-D (N, C, L) and 3-D (N, C, D, H, W) maps, forward."""
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    x, cam, alpha = make_inputs(shape, dtype, "contiguous")
    forward = FACTORIES[len(shape) - 2][name](x, cam, alpha)
    with torch.no_grad():
        share = dropped_share(forward())
    timed(benchmark, forward, group=group_key("forward", shape, dtype, "contiguous"),
          info=_info(name, "forward", shape, dtype, "contiguous", x, share))


TINY_CALLS = {
    # block_size 3: at the default 7 an 8x8 map has 4 valid centres and often drops nothing at all.
    "camdrop[eligible]": lambda x, cam, alpha: lambda: ck.camdrop(x, cam, alpha, 0.1, 3),
    "camdrop[dropblock]": lambda x, cam, alpha: lambda: ck.camdrop(x, cam, alpha, 0.1, 3, gamma_mode="dropblock"),
    "F.dropout": lambda x, cam, alpha: lambda: F.dropout(x, 0.1),
    "floor:multiply": lambda x, cam, alpha: lambda: x * 1.1,
}


@pytest.mark.parametrize("name", list(TINY_CALLS) + ["timm.drop_block_2d[coupled]"])
def test_per_call_cost(benchmark, name):
    """A tiny tensor (2, 16, 8, 8) on one thread: what one call costs beyond its arithmetic."""
    x, cam, alpha = make_inputs(TINY, torch.float32, "contiguous")
    if name in TINY_CALLS:
        forward = TINY_CALLS[name](x, cam, alpha)
    elif name in FACTORIES[2]:
        from timm.layers.drop import drop_block_2d

        forward = lambda: drop_block_2d(x, 0.1, 3, couple_channels=True)  # noqa: E731
    else:
        pytest.skip(f"{name} is not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            share = dropped_share(forward())
        timed(benchmark, forward, group=group_key("per call, 1 thread", TINY, torch.float32, "contiguous"),
              info=_info(name, "forward", TINY, torch.float32, "contiguous", x, share))
    finally:
        torch.set_num_threads(threads)
