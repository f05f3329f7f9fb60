"""Which (contender, shape, dtype, layout, pass) combinations the suite times, per device."""
from __future__ import annotations

import torch

from conftest import DEVICE, SMOKE
from contenders import contenders

PASSES = ("forward", "forward+backward")
LAYOUTS = ("contiguous", "channels_last")

# ResNet-50 stage outputs at ImageNet resolution (GPU), smaller batches on the CPU.
GPU_TARGET = (64, 256, 56, 56)
GPU_STAGES = [(n, c, h, h) for n in (32, 64) for c, h in ((256, 56), (512, 28), (1024, 14), (2048, 7))]
CPU_TARGET = (16, 256, 28, 28)
CPU_SHAPES = [CPU_TARGET, (4, 256, 56, 56), (8, 512, 14, 14), (8, 1024, 7, 7)]
SMOKE_SHAPES = [(2, 16, 9, 9)]
# 1-D (audio/time series) and 3-D (video) groups, as issue "Beyond 2-D" asks.
ND_SHAPES = [(64, 128, 4096), (8, 64, 16, 28, 28)]
SMOKE_ND = [(2, 8, 64), (2, 8, 5, 7, 7)]
TINY = (2, 16, 8, 8)  # the per-call group (one thread)

CORE = ("camdrop[eligible]", "camdrop[dropblock]", "floor:multiply", "floor:copy")
PEERS = ("F.dropout", "timm.drop_block_2d[coupled]", "timm.drop_block_2d[per channel]", "torchvision.drop_block2d",
         "torchvision.drop_block3d")
SLOW = ("reference", "naive_camdrop", "torchvision.drop_block2d", "timm.drop_block_2d[per channel]",
        "torchvision.drop_block3d", "camdrop[plain torch]", "camdrop[torch fallback]")


def main_cases():
    names = list(contenders(DEVICE))
    if SMOKE:
        return [(n, s, torch.float32, lay, p) for n in names for s in SMOKE_SHAPES for lay in LAYOUTS
                for p in PASSES]
    if DEVICE.type == "cpu":
        cases = []
        for shape in CPU_SHAPES:
            for lay in LAYOUTS:
                for p in PASSES:
                    # The slow ones once per shape (forward, contiguous): their cost is plain already.
                    cases += [(n, shape, torch.float32, lay, p) for n in names
                              if n not in SLOW or (lay == "contiguous" and p == "forward")]
        return cases
    cases = []
    for p in PASSES:
        for lay in LAYOUTS:  # everything at the target shape, both layouts
            cases += [(n, GPU_TARGET, torch.bfloat16, lay, p) for n in names]
        for shape in GPU_STAGES:  # the other stage shapes: CamDrop, floors and peers
            if shape != GPU_TARGET:
                cases += [(n, shape, torch.bfloat16, "contiguous", p) for n in names if n in CORE + PEERS]
        for dtype in (torch.float16, torch.float32):
            cases += [(n, GPU_TARGET, dtype, "contiguous", p) for n in names if n in CORE]
    return cases


def nd_cases():
    """(name, shape) for the 1-D and 3-D groups: forward, contiguous, float32 on the CPU / bf16 on CUDA."""
    shapes = SMOKE_ND if SMOKE else ND_SHAPES
    out = []
    for shape in shapes:
        rank = len(shape) - 2
        out += [(n, shape) for n in contenders(DEVICE, rank) if n not in ("naive_camdrop",)]
    return out


def scaling_shapes():
    if SMOKE:
        return SMOKE_SHAPES[0], [1, 2]
    if DEVICE.type == "cpu":
        return CPU_TARGET, [4, 8, 16, 32]
    return GPU_TARGET, [8, 16, 32, 64]


def scaling_dtype():
    return torch.bfloat16 if DEVICE.type == "cuda" and not SMOKE else torch.float32
