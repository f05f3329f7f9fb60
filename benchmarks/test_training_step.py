"""A real training step: timm resnet18 (CPU: batch 16 at 128x128) or resnet50 (CUDA: batch 128,
bf16 autocast, channels_last at 224x224), plain against `convert_resnet` defaults against timm's
own DropBlock (`drop_block_rate=0.1`)."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

import camdrop_kernels as ck

from conftest import DEVICE, SMOKE, timed
from stage import Stage

timm = pytest.importorskip("timm")

if SMOKE:
    ARCH, BATCH, SIZE = "resnet18", 2, 32
elif DEVICE.type == "cuda":
    ARCH, BATCH, SIZE = "resnet50", 128, 224
else:
    ARCH, BATCH, SIZE = "resnet18", 16, 128


def _model(kind):
    torch.manual_seed(0)
    kw = dict(drop_block_rate=0.1) if kind == "timm drop_block_rate=0.1" else {}
    model = timm.create_model(ARCH, num_classes=100, **kw)
    if kind == "camdrop (convert_resnet defaults)":
        ck.convert_resnet(model, drop_prob=0.1)
    model = model.to(DEVICE)
    if DEVICE.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.train()


@pytest.mark.parametrize("kind", ["plain", "camdrop (convert_resnet defaults)", "timm drop_block_rate=0.1"])
def test_training_step(benchmark, kind):
    model = _model(kind)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    images = torch.randn(BATCH, 3, SIZE, SIZE, generator=g).to(DEVICE)
    if DEVICE.type == "cuda":
        images = images.to(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (BATCH,), generator=g).to(DEVICE)

    def step():
        with ck.targets(model, labels) if kind.startswith("camdrop") else contextlib.nullcontext():
            with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=DEVICE.type == "cuda"):
                loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    share = None
    if kind.startswith("camdrop"):
        step()
        layers = ck.camdrop_layers(model)
        share = sum(float(l.last_dropped_fraction) for l in layers) / len(layers)
    timed(benchmark, step, group=f"training step | {ARCH} batch {BATCH} at {SIZE}",
          info=dict(contender=kind, **{"pass": "training step"}, dropped_share=share))


@pytest.mark.parametrize("kind", ["identity layers", "dropout layers", "multiply layers", "camdrop layers"])
def test_bound_layers_host_cost(benchmark, kind):
    """Forward+backward through nine layers on (8, 64, 7, 7): the host time per layer that an eager
    step adds, bound CamDrop layers beside nn.Dropout, a multiply and the identity (the first card's
    resnet50 step was bound by it). benchmarks/paired.py gives the per-layer ratio in paired rounds."""
    model = Stage(kind).to(DEVICE).train()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(8, 64, 7, 7, generator=g).to(DEVICE).requires_grad_()
    labels = torch.randint(0, 10, (8,), generator=g).to(DEVICE)

    def step():
        with ck.targets(model, labels) if kind == "camdrop layers" else contextlib.nullcontext():
            out = model(x)
        out.sum().backward()
        return out

    step()
    share = (sum(float(d.last_dropped_fraction) for d in model.drops) / len(model.drops)
             if kind == "camdrop layers" else 0.1 if kind == "dropout layers" else None)
    timed(benchmark, step, group="bound layers | 9 x (8, 64, 7, 7) forward+backward",
          info=dict(contender=kind, **{"pass": "forward+backward"}, dropped_share=share))
