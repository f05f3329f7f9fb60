"""Time and memory of CamDrop against its floor and its peers, per (pass, shape, dtype, layout).

Groups compare like with like; the summary after the run gives GB/s, percent of the
copy's bandwidth, ratios to the bare multiply, speedups over each peer, and the bytes
autograd saves for backward (and peak memory on CUDA).
"""
import pytest
import torch

from camdrop_kernels import backends
from camdrop_kernels.config import CamDropConfig
from camdrop_kernels.philox import make_seed

from cases import main_cases
from conftest import DEVICE, make_inputs, saved_bytes, sync, timed
from contenders import BLOCK_SIZE, DROP_PROB, contenders

FACTORIES = contenders(DEVICE)


def _id(case):
    name, shape, dtype, layout, p = case
    return f"{p}-{'x'.join(map(str, shape))}-{str(dtype).replace('torch.', '')}-{layout}-{name}"


def group_key(p, shape, dtype, layout):
    return f"{p} | {'x'.join(map(str, shape))} | {str(dtype).replace('torch.', '')} | {layout}"


@pytest.mark.parametrize("case", main_cases(), ids=_id)
def test_throughput(benchmark, case):
    name, shape, dtype, layout, p = case
    backward = p == "forward+backward"
    x, cam, alpha = make_inputs(shape, dtype, layout, requires_grad=backward)
    forward = FACTORIES[name](x, cam, alpha)
    x_bytes = x.numel() * x.element_size()
    info = dict(contender=name, **{"pass": p}, shape=list(shape), dtype=str(dtype), layout=layout,
                x_bytes=x_bytes, bytes=(4 if backward else 2) * x_bytes)
    if backward:
        dy = torch.randn_like(x)

        def fn():
            return torch.autograd.grad(forward(), x, dy)

        info["saved_bytes"] = saved_bytes(forward)
        if DEVICE.type == "cuda":
            sync()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            sync()
            info["peak_extra_bytes"] = torch.cuda.max_memory_allocated() - base
    else:
        fn = forward
    timed(benchmark, fn, group=group_key(p, shape, dtype, layout), info=info)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_mask_build_share(benchmark, layout):
    """Selection and mask build alone (no read or write of x), at the target shape, auto backend."""
    from cases import CPU_TARGET, GPU_TARGET, SMOKE_SHAPES
    from conftest import SMOKE

    shape = SMOKE_SHAPES[0] if SMOKE else (GPU_TARGET if DEVICE.type == "cuda" else CPU_TARGET)
    dtype = torch.bfloat16 if DEVICE.type == "cuda" and not SMOKE else torch.float32
    x, cam, alpha = make_inputs(shape, dtype, layout)
    name = backends.resolve("auto", x)
    module = backends.module(name)
    cfg = CamDropConfig.build(shape, DROP_PROB, BLOCK_SIZE, None, None, "square", "batch", "dropblock", 1.0)
    timed(benchmark, lambda: module.build_mask(cam, alpha, make_seed(None, None, x.device), cfg),
          group=group_key("forward", shape, dtype, layout),
          info=dict(contender=f"mask build[{name}]", **{"pass": "forward"}, shape=list(shape), dtype=str(dtype),
                    layout=layout, x_bytes=x.numel() * x.element_size(), bytes=0))
