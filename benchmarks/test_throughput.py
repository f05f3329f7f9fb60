"""Time and memory of CamDrop against its floor and its peers, per (pass, shape, dtype, layout), with
the share of x each contender actually dropped beside its time. Every block-based contender runs
at the block size ``convert`` uses for the map's stage (3 at 7x7, 5 at 14x14, 7 above: see
``contenders.block_size_for``), named in the group.

Groups compare like with like; the summary after the run gives GB/s, percent of the copy's
bandwidth, ratios to the bare multiply, speedups over each peer, the share dropped, and the
bytes autograd saves for backward (and peak memory on CUDA).
"""
import pytest
import torch
import torch.nn.functional as F

import camdrop_kernels as ck

import functools

from cases import TINY, main_cases, nd_cases
from conftest import DEVICE, make_inputs, saved_bytes, timed
from contenders import block_size_for, contenders, dropped_share


@functools.lru_cache(maxsize=None)
def factories(rank, block_size):
    return contenders(DEVICE, rank, block_size)


def _id(case):
    name, shape, dtype, layout, p = case
    return f"{p}-{'x'.join(map(str, shape))}-{str(dtype).replace('torch.', '')}-{layout}-{name}"


def group_key(p, shape, dtype, layout, block_size):
    """The group: pass, shape, dtype, layout and the block size (convert's for the map's stage)."""
    return f"{p} | {'x'.join(map(str, shape))} | {str(dtype).replace('torch.', '')} | {layout} | block {block_size}"


def _info(name, p, shape, dtype, layout, x, share, block_size):
    x_bytes = x.numel() * x.element_size()
    return dict(contender=name, **{"pass": p}, shape=list(shape), dtype=str(dtype), layout=layout, x_bytes=x_bytes,
                bytes=(4 if p == "forward+backward" else 2) * x_bytes, dropped_share=share, block_size=block_size)


@pytest.mark.parametrize("case", main_cases(), ids=_id)
def test_throughput(benchmark, case):
    name, shape, dtype, layout, p = case
    backward = p == "forward+backward"
    x, cam, alpha = make_inputs(shape, dtype, layout, requires_grad=backward)
    block = block_size_for(shape)
    forward = factories(2, block)[name](x, cam, alpha)
    with torch.no_grad():
        share = dropped_share(forward())
    info = _info(name, p, shape, dtype, layout, x, share, block)
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
    timed(benchmark, fn, group=group_key(p, shape, dtype, layout, block), info=info)


@pytest.mark.parametrize("name,shape", nd_cases(), ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
def test_other_ranks(benchmark, name, shape):
    """1-D (N, C, L) and 3-D (N, C, D, H, W) maps, forward."""
    dtype = torch.bfloat16 if DEVICE.type == "cuda" else torch.float32
    x, cam, alpha = make_inputs(shape, dtype, "contiguous")
    block = block_size_for(shape)
    forward = factories(len(shape) - 2, block)[name](x, cam, alpha)
    with torch.no_grad():
        share = dropped_share(forward())
    timed(benchmark, forward, group=group_key("forward", shape, dtype, "contiguous", block),
          info=_info(name, "forward", shape, dtype, "contiguous", x, share, block))


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
    elif name in factories(2, 3):
        from timm.layers.drop import drop_block_2d

        forward = lambda: drop_block_2d(x, 0.1, 3, couple_channels=True)  # noqa: E731
    else:
        pytest.skip(f"{name} is not installed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            share = dropped_share(forward())
        timed(benchmark, forward, group=group_key("per call, 1 thread", TINY, torch.float32, "contiguous", 3),
              info=_info(name, "forward", TINY, torch.float32, "contiguous", x, share, 3))
    finally:
        torch.set_num_threads(threads)
