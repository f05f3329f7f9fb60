"""What the benchmarks time: CamDrop in both gamma modes and on each backend, its reference, a naive
CamDrop, floors and peers.

Each contender is ``make(x, cam, alpha) -> fn`` where ``fn()`` returns the output; the
forward+backward benchmarks differentiate that output with respect to x. ``dropped_share``
measures what a contender actually drops (x is Gaussian, so an exact zero in the output is a
dropped element: there is no ReLU in between).
"""
from __future__ import annotations

import importlib.util
from typing import Callable, Dict

import torch
import torch.nn.functional as F

import camdrop_kernels as ck
from camdrop_kernels import backends, reference

DROP_PROB = 0.1
BLOCK_SIZE = 7
FUNCTIONS = {1: ck.camdrop1d, 2: ck.camdrop, 3: ck.camdrop3d}
REFERENCES = {1: reference.camdrop1d, 2: reference.camdrop, 3: reference.camdrop3d}


def naive_camdrop(x, cam, alpha, drop_prob=DROP_PROB, block_size=BLOCK_SIZE):
    """CamDrop the way the authors' TensorFlow code does it, ported literally to torch (2-D).

    Dense uniform noise over the whole tensor from torch's RNG, per-sample top-k thresholds on
    the CAM and on alpha (ties beyond k included), DropBlock's seed rate, max-pool dilation of
    full-size seed maps, and one rescale for the batch.
    """
    N, C, H, W = x.shape
    k = min(block_size, H, W)
    n_pix = max(1, H * W // (k * k))
    n_chan = max(1, C // 8)
    flat = cam.reshape(N, -1)
    top_pix = (flat >= flat.topk(n_pix, dim=1).values[:, -1:]).reshape(N, 1, H, W)
    top_chan = (alpha >= alpha.topk(n_chan, dim=1).values[:, -1:]).reshape(N, C, 1, 1)
    gamma = drop_prob * H * W / (k * k * (H - k + 1) * (W - k + 1))
    seeds = ((torch.rand_like(x, dtype=torch.float32) < gamma) & top_pix & top_chan).to(x.dtype)
    pad = ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2)
    keep = 1 - F.max_pool2d(F.pad(seeds, pad), k, stride=1)
    return x * keep * (keep.numel() / keep.sum())


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def block_size_for(shape) -> int:
    """The block size ``convert`` gives the stage a map of this size is in: ResNet at 224 px has 7x7
    maps in its last stage (block 3) and 14x14 in the one before (block 5); DropBlock's 7 elsewhere.
    (Block 7 on a 7x7 map has one valid centre and drops nothing: a benchmark that drops nothing
    proves nothing there.)"""
    from camdrop_kernels.conversion import _BLOCK_SIZE_FROM_LAST, _UNSTAGED_BLOCK_SIZE

    side = min(shape[2:])
    stage = 0 if side <= 7 else 1 if side <= 14 else None
    return _BLOCK_SIZE_FROM_LAST.get(stage, _UNSTAGED_BLOCK_SIZE)


def contenders(device: torch.device, rank: int = 2, block_size: int = BLOCK_SIZE) -> Dict[str, Callable]:
    """Name -> factory, for what is installed and runs on ``device`` for maps of ``rank``, every
    block-based contender at ``block_size``."""
    found: Dict[str, Callable] = {}
    fn = FUNCTIONS[rank]
    for mode in ("eligible", "dropblock"):
        kw = dict(drop_prob=DROP_PROB, block_size=block_size, gamma_mode=mode)
        found[f"camdrop[{mode}]"] = lambda x, cam, alpha, kw=kw: (lambda: fn(x, cam, alpha, **kw))
    plain = dict(drop_prob=DROP_PROB, block_size=block_size)
    if device.type == "cpu" and backends.native_available():
        found["camdrop[plain torch]"] = lambda x, cam, alpha: (lambda: _using("plain", fn, x, cam, alpha, plain))
    if device.type == "cuda" and backends.triton_available():
        found["camdrop[torch fallback]"] = lambda x, cam, alpha: (lambda: fn(x, cam, alpha, **plain, backend="torch"))
    found["reference"] = lambda x, cam, alpha: (lambda: REFERENCES[rank](x, cam, alpha, **plain))
    if rank == 2:
        found["naive_camdrop"] = lambda x, cam, alpha: (lambda: naive_camdrop(x, cam, alpha, block_size=block_size))

    def multiply(x, cam, alpha):
        scale = torch.tensor(1.0 / (1.0 - DROP_PROB), dtype=x.dtype, device=x.device)
        return lambda: x * scale

    found["floor:multiply"] = multiply
    found["floor:copy"] = lambda x, cam, alpha: (lambda: x.clone())
    found["F.dropout"] = lambda x, cam, alpha: (lambda: F.dropout(x, DROP_PROB, training=True))
    if rank == 2 and _have("timm"):
        from timm.layers.drop import drop_block_2d

        found["timm.drop_block_2d[coupled]"] = lambda x, cam, alpha: (
            lambda: drop_block_2d(x, DROP_PROB, block_size, couple_channels=True))
        found["timm.drop_block_2d[per channel]"] = lambda x, cam, alpha: (
            lambda: drop_block_2d(x, DROP_PROB, block_size, couple_channels=False))
    if _have("torchvision"):
        from torchvision.ops import drop_block2d, drop_block3d

        if rank == 2:
            found["torchvision.drop_block2d"] = lambda x, cam, alpha: (lambda: drop_block2d(x, DROP_PROB, block_size))
        if rank == 3:
            found["torchvision.drop_block3d"] = lambda x, cam, alpha: (lambda: drop_block3d(x, DROP_PROB, block_size))
    return found


def _using(name, fn, x, cam, alpha, kw):
    with backends.using(name):
        return fn(x, cam, alpha, **kw)


def dropped_share(output: torch.Tensor) -> float:
    """Share of the output that is exactly zero: the dropped elements, for a Gaussian x."""
    return float((output == 0).float().mean())


def missing_peers() -> list:
    """Peers that are not installed here (the report says so)."""
    return [name for name, mod in (("timm", "timm"), ("torchvision", "torchvision")) if not _have(mod)]
