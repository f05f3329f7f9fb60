"""What the benchmarks time: CamDrop's backends, its reference, a naive CamDrop, floors and peers.

Each contender is ``make(x, cam, alpha) -> fn`` where ``fn()`` returns the output; the
forward+backward benchmarks differentiate that output with respect to x.
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


def naive_camdrop(x, cam, alpha, drop_prob=DROP_PROB, block_size=BLOCK_SIZE):
    """CamDrop the way the authors' TensorFlow code does it, ported literally to torch.

    Dense uniform noise over the whole tensor from torch's RNG, per-sample top-k
    thresholds on the CAM and on alpha (ties beyond k included), DropBlock's seed rate,
    max-pool dilation of full-size seed maps, and one rescale for the batch.
    """
    N, C, H, W = x.shape
    k = min(block_size, H, W)
    n_pix = max(1, H * W // (k * k))
    n_chan = max(1, C // 8)
    flat = cam.reshape(N, -1)
    pix_thr = flat.topk(n_pix, dim=1).values[:, -1:]
    top_pix = (flat >= pix_thr).reshape(N, 1, H, W)
    chan_thr = alpha.topk(n_chan, dim=1).values[:, -1:]
    top_chan = (alpha >= chan_thr).reshape(N, C, 1, 1)
    gamma = drop_prob * H * W / (k * k * (H - k + 1) * (W - k + 1))
    noise = torch.rand_like(x, dtype=torch.float32)
    seeds = ((noise < gamma) & top_pix & top_chan).to(x.dtype)
    pad = ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2)
    block = F.max_pool2d(F.pad(seeds, pad), k, stride=1)
    keep = 1 - block
    return x * keep * (keep.numel() / keep.sum())


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def contenders(device: torch.device) -> Dict[str, Callable]:
    """Name -> factory, for what is installed and runs on ``device``."""
    found: Dict[str, Callable] = {}
    kw = dict(drop_prob=DROP_PROB, block_size=BLOCK_SIZE)
    found["camdrop"] = lambda x, cam, alpha: (lambda: ck.camdrop(x, cam, alpha, **kw))
    found["camdrop[torch]"] = lambda x, cam, alpha: (lambda: ck.camdrop(x, cam, alpha, **kw, backend="torch"))
    if device.type == "cuda" and backends.triton_available():
        found["camdrop[triton]"] = lambda x, cam, alpha: (lambda: ck.camdrop(x, cam, alpha, **kw, backend="triton"))
    found["reference"] = lambda x, cam, alpha: (lambda: reference.camdrop(x, cam, alpha, **kw))
    found["naive_camdrop"] = lambda x, cam, alpha: (lambda: naive_camdrop(x, cam, alpha))

    def multiply(x, cam, alpha):
        scale = torch.tensor(1.0 / (1.0 - DROP_PROB), dtype=x.dtype, device=x.device)
        return lambda: x * scale

    found["floor:multiply"] = multiply
    found["floor:copy"] = lambda x, cam, alpha: (lambda: x.clone())
    found["F.dropout"] = lambda x, cam, alpha: (lambda: F.dropout(x, DROP_PROB, training=True))
    if _have("timm"):
        from timm.layers.drop import drop_block_2d

        found["timm.drop_block_2d"] = lambda x, cam, alpha: (
            lambda: drop_block_2d(x, DROP_PROB, BLOCK_SIZE, couple_channels=False))
        found["timm.drop_block_2d[coupled]"] = lambda x, cam, alpha: (
            lambda: drop_block_2d(x, DROP_PROB, BLOCK_SIZE, couple_channels=True))
    if _have("torchvision"):
        from torchvision.ops import drop_block2d

        found["torchvision.drop_block2d"] = lambda x, cam, alpha: (lambda: drop_block2d(x, DROP_PROB, BLOCK_SIZE))
    return found


def missing_peers() -> list:
    """Peers that are not installed here (the report says so)."""
    return [name for name, mod in (("timm", "timm"), ("torchvision", "torchvision")) if not _have(mod)]
