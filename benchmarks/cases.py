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

CORE = ("camdrop", "camdrop[triton]", "floor:multiply", "floor:copy")
PEERS = ("F.dropout", "timm.drop_block_2d", "timm.drop_block_2d[coupled]", "torchvision.drop_block2d")


def main_cases():
    names = list(contenders(DEVICE))
    if SMOKE:
        return [(n, s, torch.float32, lay, p) for n in names for s in SMOKE_SHAPES for lay in LAYOUTS
                for p in PASSES]
    if DEVICE.type == "cpu":
        return [(n, s, torch.float32, lay, p) for n in names for s in CPU_SHAPES for lay in LAYOUTS
                for p in PASSES]
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


def scaling_shapes():
    if SMOKE:
        return SMOKE_SHAPES[0], [1, 2]
    if DEVICE.type == "cpu":
        return CPU_TARGET, [4, 8, 16, 32]
    return GPU_TARGET, [8, 16, 32, 64]


def scaling_dtype():
    return torch.bfloat16 if DEVICE.type == "cuda" and not SMOKE else torch.float32
