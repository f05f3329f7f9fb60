"""Hostile calls into the native extension directly (``camdrop_kernels._native``), for the sanitizer
run (tools/sanitize.sh) and as a crash test on its own.

    python tools/native_fuzz.py [--calls 4000] [--seed 0]

Each round builds a valid call of build, apply or forward (random rank, dtype, layout, sizes,
options, threads) and either makes it as is, which must succeed and give the same y as the plain
torch path, or swaps one argument for a hostile one: misaligned data pointers, no storage (data
pointer 0), empty tensors, huge strides (on size-1 axes, on empty tensors, and numpy views reaching
past 2**62 bytes), outputs overlapping inputs or each other, expanded outputs, read-only outputs,
wrong dtypes, shapes and layouts, bad slot values, extreme integers and floats. Every call must
return or raise TypeError/ValueError/OverflowError/MemoryError; anything else fails the run, and a
crash or a sanitizer report ends the process.
"""
import argparse
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout's package

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.utils.dlpack import to_dlpack  # noqa: E402

from camdrop_kernels import _native  # noqa: E402

ALLOWED = (TypeError, ValueError, OverflowError, MemoryError)
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
KEEP = []  # buffers behind misaligned tensors: alive until the call is made


def dl(t):
    return to_dlpack(t) if isinstance(t, torch.Tensor) else t


def misaligned(t):
    """t's values in memory one byte off its element alignment."""
    if t.numel() == 0:
        return t
    buf = bytearray(t.numel() * t.element_size() + 1)
    KEEP.append(buf)
    m = torch.frombuffer(buf, dtype=t.dtype, offset=1, count=t.numel()).view(t.shape)
    m.copy_(t)
    return m


def strided(t, rng):
    """The same values in another layout: channels_last-like, transposed, or a strided slice."""
    kind = rng.randrange(4)
    if kind == 0 or t.dim() < 3:
        return t
    if kind == 1:  # channels innermost
        perm = [0] + list(range(2, t.dim())) + [1]
        inv = [perm.index(d) for d in range(t.dim())]
        return t.permute(perm).contiguous().permute(inv)
    if kind == 2:  # last axis and a bigger one swapped in memory
        return t.transpose(-1, -2).contiguous().transpose(-1, -2)
    big = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
    view = big[..., ::2]
    view.copy_(t)
    return view


def valid_call(rng):
    """(name, args, x, cam, alpha, state outputs) of a call that must succeed."""
    rank = rng.choice((1, 2, 2, 3))
    N, C = rng.randint(1, 5), rng.choice((1, 3, 8, 17, 40, 64))
    S = tuple(rng.randint(1, {1: 70, 2: 20, 3: 8}[rank]) for _ in range(rank))
    if rng.random() < 0.05:  # big enough for the thread pool
        N, C, S = 4, 64, (24, 24) if rank == 2 else S
        rank = len(S)
    P = 1
    for s in S:
        P *= s
    dtype = rng.choice(DTYPES)
    x = strided(torch.randn((N, C) + S).to(dtype), rng)
    cam = torch.randn((N,) + S).to(rng.choice(DTYPES))
    if rng.random() < 0.2:
        cam[..., 0] = float("nan")
    alpha = torch.randn(N, C).to(rng.choice(DTYPES))
    block = rng.choice((1, 2, 3, 5, 7, 100))
    n_chan = rng.randint(1, C)
    state = [torch.empty(N, C, dtype=torch.int32), torch.empty(N, n_chan, (P + 31) // 32, dtype=torch.int32),
             torch.empty(N, dtype=torch.float64 if dtype == torch.float64 else torch.float32),
             torch.empty(N, dtype=torch.int64), torch.empty(N, dtype=torch.float32)]
    scalars = [block, rng.randint(0, 1), rng.randint(1, P), n_chan, rng.randint(0, 1), rng.choice((0.5, 1.0, 3.0)),
               rng.randint(0, 2), rng.choice((1, 2))]
    seed, p = torch.tensor(rng.randrange(2**63)), torch.tensor(rng.choice((0.0, 0.05, 0.3, 1.0)), dtype=torch.float64)
    y = x if rng.random() < 0.2 else torch.empty_like(x)
    name = rng.choice(("build", "apply", "forward"))
    if name == "build":
        args = [cam, alpha, seed, p] + state + scalars
    elif name == "forward":
        args = [x, y, cam, alpha, seed, p] + state + scalars
    else:
        _native.build(*[dl(a) for a in [cam, alpha, seed, p] + state + scalars])
        args = [x, y] + state[:3] + [scalars[-1]]
    return name, args


def hostile_tensor(t, rng):
    """One hostile stand-in for tensor t."""
    shape = tuple(t.shape)
    choice = rng.randrange(17)
    if choice == 0:
        return misaligned(t)
    if choice == 1:
        return torch._efficientzerotensor(shape, dtype=t.dtype)  # data pointer 0
    if choice == 2:
        return torch.empty((0,) + shape[1:], dtype=t.dtype)
    if choice == 3 and t.dim() >= 1:  # a size-1 axis (one of t's own where it has one) with a stride near 2**62
        s = list(shape)
        ones = [d for d, n in enumerate(s) if n == 1]
        k = rng.choice(ones) if ones else rng.randrange(len(s))
        s[k] = 1
        st = list(torch.empty(s, dtype=t.dtype).stride())
        st[k] = rng.choice((2**62, 2**62 + 1, 2**63 - 1, 2**40))
        return torch.empty(s, dtype=t.dtype).as_strided(s, st)
    if choice == 4 and t.dim() >= 1:  # no elements, huge strides
        s = list(shape)
        s[0] = 0
        return torch.empty(0, dtype=t.dtype).as_strided(s, [2**62] * len(s))
    if choice == 5 and t.dim() >= 2 and t.dtype != torch.bfloat16:  # a numpy view reaching past 2**62 bytes
        a = np.zeros(4, dtype={torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16,
                               torch.int32: np.int32, torch.int64: np.int64}[t.dtype])
        st = [0] * t.dim()
        st[rng.randrange(t.dim())] = 2**62  # bytes: (2 - 1) * 2**62 is past the limit
        v = np.lib.stride_tricks.as_strided(a, shape=[max(2, n) for n in shape], strides=st)
        return v.__dlpack__()
    if choice == 6 and t.dim() >= 1 and t.numel() > 1:  # overlapping elements (expanded)
        return t.reshape(-1)[:1].expand(shape) if t.numel() else t
    if choice == 7:
        return t.to(rng.choice((torch.int32, torch.int64, torch.float16, torch.float64, torch.bool, torch.uint8)))
    if choice == 8:
        return t.reshape(-1) if t.dim() != 1 else t[None]
    if choice == 9 and t.dim() >= 2:
        return t.transpose(0, -1)
    if choice == 10 and t.dtype == torch.int32:
        return torch.full(shape, rng.choice((-2, 10**9, -(2**31), 2**31 - 1, 3)), dtype=torch.int32)
    if choice == 11 and t.is_floating_point():
        return torch.full(shape, rng.choice((float("nan"), float("inf"), -1.0, 1e38)), dtype=t.dtype)
    if choice == 12:  # read-only (a DLPack 1.x capsule with the flag)
        a = t.detach().numpy().copy() if t.dtype != torch.bfloat16 else t.float().numpy().copy()
        a.flags.writeable = False
        return a.__dlpack__(max_version=(1, 0))
    if choice == 13:
        return rng.choice((None, 3, object(), "x"))
    if choice == 14:
        return t.to("meta")
    if choice == 15 and t.dim() >= 1:
        return torch.cat([t, t], 0) if t.numel() < 10**6 else t
    return t[None] if t.dim() < 8 else t


def overlap(args, rng, first_output):
    """An output placed over another argument's memory."""
    o = rng.randrange(first_output, len(args))
    k = rng.randrange(len(args))
    out, other = args[o], args[k]
    if not isinstance(out, torch.Tensor) or not isinstance(other, torch.Tensor) or k == o or other.numel() == 0:
        return args
    if out.element_size() > other.element_size() * other.numel():
        return args
    raw = other.reshape(-1).view(torch.uint8) if other.is_contiguous() else None
    if raw is None or out.numel() * out.element_size() > raw.numel():
        return args
    start = rng.choice((0, raw.numel() - out.numel() * out.element_size()))
    start -= start % out.element_size()
    args = list(args)
    try:
        args[o] = raw[start:start + out.numel() * out.element_size()].view(out.dtype).view(out.shape)
    except RuntimeError:  # torch cannot view those bytes as out's dtype: leave the call as it was
        pass
    return args


def hostile_scalar(v, rng):
    return rng.choice((-1, 0, 1, 2, 4097, 2**31, 2**40, 2**63 - 1, -(2**63), 2**64, float("nan"), float("inf"),
                       1e308, -0.0, True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    torch.manual_seed(args.seed)
    counts = {"ok": 0, "refused": 0}
    first_output = {"build": 4, "apply": 1, "forward": 1}
    for k in range(args.calls):
        name, call = valid_call(rng)
        n_tensors = sum(isinstance(a, torch.Tensor) for a in call)
        mode = rng.random()
        if mode < 0.15:
            pass  # as is: must succeed
        elif mode < 0.25:
            call = overlap(call, rng, first_output[name])
        else:
            where = rng.randrange(len(call))
            if where < n_tensors:
                try:
                    call[where] = hostile_tensor(call[where], rng)
                except RuntimeError:  # torch (or numpy) would not make that one: keep the argument
                    pass
            else:
                call[where] = hostile_scalar(call[where], rng)
        fn = getattr(_native, name)
        try:
            fn(*[dl(a) if isinstance(a, torch.Tensor) and a.device.type == "cpu" else a for a in call])
            counts["ok"] += 1
        except ALLOWED as error:
            if mode < 0.15:
                raise SystemExit(f"call {k}: a valid {name} call was refused: {error}")
            counts["refused"] += 1
        except Exception as error:  # noqa: BLE001
            raise SystemExit(f"call {k} ({name}) raised {type(error).__name__}: {error}")
        KEEP.clear()
    print(f"native_fuzz: {args.calls} calls, {counts['ok']} returned, {counts['refused']} refused")
    if counts["ok"] < args.calls // 20 or counts["refused"] < args.calls // 4:
        raise SystemExit("native_fuzz: too few calls of one kind: the fuzz did not exercise both outcomes")


if __name__ == "__main__":
    main()
