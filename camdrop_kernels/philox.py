"""The contract's random stream U(seed, o) (SPEC.md) in plain torch integer ops, and seed drawing.

Philox4x32-10 with key (seed lo, seed hi) and counter (o lo, o hi, 0, 0), the same
stream as ``triton.language.rand(seed, o)`` for an int64 offset. 32-bit words are
held in int64 tensors; a product of two words is taken modulo 2**64 (torch's int64
multiply wraps), so its low and high halves are ``p & MASK`` and ``(p >> 32) & MASK``.
"""
from __future__ import annotations

from typing import Optional

import torch

MASK32 = 0xFFFFFFFF
ROUND_A = 0xD2511F53
ROUND_B = 0xCD9E8D57
KEY_A = 0x9E3779B9
KEY_B = 0xBB67AE85
ROUNDS = 10
# The float32 nearest to 4.6566127342e-10 (just below 2**-31), so that U < 1 always.
UNIFORM_SCALE = 4.6566127342e-10
SEED_LIMIT = 2**63


def philox_uniform(seed: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """U(seed, o) as float32, elementwise over the int64 ``offsets``; ``seed`` is an int64 scalar tensor."""
    seed = seed.to(torch.int64)
    k0 = seed & MASK32
    k1 = (seed >> 32) & MASK32
    c0 = offsets & MASK32
    c1 = (offsets >> 32) & MASK32
    c2 = torch.zeros_like(offsets)
    c3 = torch.zeros_like(offsets)
    for _ in range(ROUNDS):
        p0 = c0 * ROUND_A
        p2 = c2 * ROUND_B
        c0, c1, c2, c3 = (
            ((p2 >> 32) ^ c1 ^ k0) & MASK32,
            p2 & MASK32,
            ((p0 >> 32) ^ c3 ^ k1) & MASK32,
            p0 & MASK32,
        )
        k0 = (k0 + KEY_A) & MASK32
        k1 = (k1 + KEY_B) & MASK32
    # c0 read as int32 x; x < 0 becomes -x - 1, i.e. 2**32 - 1 - c0 for c0 >= 2**31.
    x = torch.where(c0 >= 2**31, MASK32 - c0, c0)
    scale = torch.tensor(UNIFORM_SCALE, dtype=torch.float32, device=offsets.device)
    return x.to(torch.float32) * scale


def make_seed(seed: Optional[int], generator: Optional[torch.Generator], x: torch.Tensor) -> torch.Tensor:
    """The call's seed as an int64 one-element tensor, without a host-device sync or a device launch
    where avoidable.

    An int ``seed`` becomes a CPU tensor (the kernels read it as a value). ``None`` draws one from
    ``generator`` if given, else from torch's default CPU generator (so ``torch.manual_seed``
    reproduces it, and no CUDA kernel is launched for it), except while a CUDA graph is being
    captured or torch.compile is tracing a CUDA call: then it is drawn on the device, so every
    replay draws a fresh mask.
    """
    if seed is not None:
        return torch.tensor(seed, dtype=torch.int64)
    if generator is not None:
        return torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64, device=generator.device, generator=generator)
    if x.device.type == "cuda" and (torch.compiler.is_compiling() or torch.cuda.is_current_stream_capturing()):
        return torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64, device=x.device)
    return torch.randint(0, SEED_LIMIT - 1, (), dtype=torch.int64)


_RATES: dict = {}


def rate_tensor(drop_prob: float) -> torch.Tensor:
    """drop_prob as a float64 CPU scalar tensor (cached: a training loop asks for a few values)."""
    t = _RATES.get(drop_prob)
    if t is None:
        if len(_RATES) > 256:
            _RATES.clear()
        t = _RATES[drop_prob] = torch.tensor([drop_prob], dtype=torch.float64)
    return t
