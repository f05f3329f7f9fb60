"""No entry point can crash the process: every registered op, and the native module under it,
called with hostile arguments of its schema's types (a valid call with one argument swapped at a
time), in a subprocess. Each call must return or raise a Python exception; a crash fails the test.
"""
import subprocess
import sys
import textwrap

FUZZ = textwrap.dedent(r'''
    import random, sys, torch
    import camdrop_kernels as ck
    from camdrop_kernels import backends, ops
    from camdrop_kernels.options import Options
    from torch.utils.dlpack import to_dlpack

    rng = random.Random(int(sys.argv[1]))
    calls = int(sys.argv[2])
    N, C, S = 2, 8, (6, 7)
    x = torch.randn(N, C, *S)
    cam, alpha = torch.randn(N, *S), torch.randn(N, C)
    seed, p = torch.tensor(7), torch.tensor(0.6, dtype=torch.float64)
    key = Options.get(2, 3, None, None, "square", "batch", "eligible", 1.0).key
    slots, bits, scale, dropped, rate = ops.camdrop_state(x, cam, alpha, seed, p, key)

    def tensors(like):
        """Hostile tensors in the neighbourhood of ``like``."""
        out = [
            like.to(torch.int32), like.to(torch.int64), like.to(torch.float16), like.to(torch.float64),
            like.to(torch.bool), like.to(torch.uint8), torch.empty(0), torch.empty((0,) + tuple(like.shape[1:])),
            torch.zeros(()), torch.zeros(1), like.reshape(-1), like[None], like.to("meta"),
            torch.full(tuple(like.shape), 10**9, dtype=torch.int32), torch.full(tuple(like.shape), -7, dtype=torch.int32),
            torch.full(tuple(like.shape), float("nan")), torch.full(tuple(like.shape), float("inf")),
            torch.randint(-3, 12, tuple(like.shape), dtype=torch.int32),
            like.to(torch.complex64) if like.is_floating_point() else like,
        ]
        if like.dim() >= 1 and like.shape[0] > 1:
            out += [like[:1], like[::2], like.flip(0).contiguous()]
        if like.dim() >= 2:
            out += [like.transpose(0, 1), like[:, :1], like[:, :1].expand_as(like) if like.shape[1] > 1 else like,
                    torch.cat([like, like], 1), like.unsqueeze(-1)]
        if like.dim() >= 3:
            out += [like[..., :1], like.transpose(-1, -2), like[..., ::2]]
        return out

    strings = [key, "", "x" * 10000, "2|7", "1|3|-|-|square|batch|eligible|1.0", "3|3|-|-|square|batch|eligible|1.0",
               "2|0|-|-|square|batch|eligible|1.0", "2|3|i0|-|square|batch|eligible|1.0",
               "2|3|f1.5|-|square|batch|eligible|1.0", "2|99999999999999999999999|-|-|square|batch|eligible|1.0",
               "2|3|-|-|square|batch|eligible|inf", "2|3|-|-|square|batch|eligible|-1.0", "\x00", "2|3|-|-|cube|a|b|1"]
    valid = {
        "camdrop_state": [x, cam, alpha, seed, p, key],
        "camdrop_apply": [x, slots, bits, scale],
        "camdrop_apply_": [x.clone(), slots, bits, scale],
        "check_map_size": [x, key, "CamDrop2d"],
    }
    survived = raised = 0
    for k in range(calls):
        name = rng.choice(sorted(valid))
        args = list(valid[name])
        where = rng.randrange(len(args))
        if isinstance(args[where], str):
            args[where] = rng.choice(strings)
        else:
            args[where] = rng.choice(tensors(args[where]))
        if name == "camdrop_apply_" and isinstance(args[0], torch.Tensor) and args[0].device.type != "meta":
            args[0] = args[0].clone() if args[0].numel() < 10**7 else args[0]
        try:
            getattr(ops, name)(*args)
            survived += 1
        except Exception:
            raised += 1
    # The native module itself, handed wrong capsules, non-capsules and wrong numbers.
    from camdrop_kernels import _native
    caps = lambda *ts: [to_dlpack(t) for t in ts]
    for k in range(calls // 10):
        out = [torch.empty_like(t) for t in (slots, bits, scale, dropped, rate)]
        build = caps(cam, alpha, seed, p, *out) + [3, 0, 5, 1, 1, 1.0, 0, 2]
        apply = caps(x, torch.empty_like(x), slots, bits, scale) + [2]
        args = list(rng.choice([build, apply]))
        where = rng.randrange(len(args))
        if isinstance(args[where], int) or isinstance(args[where], float):
            args[where] = rng.choice([-1, 0, 10**6, 2**40, -2**62, float("nan"), 1e308, 5])
        else:
            t = rng.choice(tensors(rng.choice([x, cam, slots, bits, scale])))
            args[where] = rng.choice([to_dlpack(t.detach()) if t.device.type == "cpu" else 1, object(), None, 3])
        try:
            (_native.build if len(args) == len(build) else _native.apply)(*args)
        except Exception:
            raised += 1
    print("done", survived, raised)
''')


def test_ten_thousand_hostile_calls_never_crash(tmp_path):
    script = tmp_path / "fuzz.py"
    script.write_text(FUZZ)
    proc = subprocess.run([sys.executable, str(script), "20261127", "10000"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"the process died (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    survived, raised = map(int, proc.stdout.split()[-2:])
    assert raised > 1000 and survived > 100, proc.stdout  # it exercised both outcomes


def test_hostile_state_from_the_issue_is_refused():
    """The calls that crashed before: huge or int32-vs-int64 channel indices in the backward state,
    and alpha narrower than x. Each now raises at once, naming what is wrong."""
    import pytest
    import torch

    from camdrop_kernels import ops
    from camdrop_kernels.options import Options

    x = torch.randn(2, 8, 6, 7)
    cam, alpha = torch.randn(2, 6, 7), torch.randn(2, 8)
    key = Options.get(2, 3, None, None, "square", "batch", "eligible", 1.0).key
    seed, p = torch.tensor(7), torch.tensor(0.6, dtype=torch.float64)
    slots, bits, scale, _, _ = ops.camdrop_state(x, cam, alpha, seed, p, key)
    with pytest.raises(ValueError, match="slots"):
        ops.camdrop_apply(x, torch.full_like(slots, 10**9), bits, scale)
    with pytest.raises(TypeError, match="slots"):
        ops.camdrop_apply(x, slots.long(), bits, scale)
    with pytest.raises(ValueError, match="alpha"):
        ops.camdrop_state(x, cam, alpha[:, :1], seed, p, key)
    with pytest.raises(ValueError, match="bits"):
        ops.camdrop_apply(x, slots, bits[:, :, :1], scale)
    with pytest.raises(ValueError, match="drop_prob"):
        ops.camdrop_state(x, cam, alpha, seed, torch.tensor(1.5, dtype=torch.float64), key)


def test_every_backend_checks_the_same_values():
    """Review finding: the plain-torch backend accepted a negative seed, a NaN rate and duplicate
    slots that the native one refused; an empty x let garbage through on the eager path."""
    import pytest
    import torch

    from camdrop_kernels import backends, ops
    from camdrop_kernels.options import Options

    x = torch.randn(2, 8, 6, 7)
    cam, alpha = torch.randn(2, 6, 7), torch.randn(2, 8)
    key = Options.get(2, 3, None, None, "square", "batch", "eligible", 1.0).key
    seed, p = torch.tensor(7), torch.tensor(0.6, dtype=torch.float64)
    for name in ("native", "plain"):
        with backends.using(name):
            slots, bits, scale, _, _ = ops.camdrop_state(x, cam, alpha, seed, p, key)
            with pytest.raises(ValueError, match="seed"):
                ops.camdrop_forward(x, cam, alpha, torch.tensor(-5), p, key)
            for bad in (float("nan"), 2.0):
                with pytest.raises(ValueError, match="drop_prob"):
                    ops.camdrop_forward(x, cam, alpha, seed, torch.tensor(bad, dtype=torch.float64), key)
            twice = slots.clone()
            twice[0, :2] = 0
            with pytest.raises(ValueError, match="slot"):
                ops.camdrop_apply(x, twice, bits, scale)
            with pytest.raises((ValueError, TypeError)):
                ops.camdrop_forward(torch.randn(0, 8, 6, 7), cam, alpha[:, :3], seed, p, key)
            y = ops.camdrop_forward(x, cam, alpha, seed, p, Options.get(2, 3, None, None, "square", "batch",
                                                                         "eligible", 1e308).key)[0]
            assert y.shape == x.shape


def test_aliased_and_read_only_arguments_are_refused():
    """Review finding: an output sharing memory with an input (slots inside x, y overlapping x by
    one element, a rate output over the slots) crashed the native code or gave wrong values; a
    read-only DLPack array was written. Every such call is refused now."""
    import numpy as np
    import pytest
    import torch
    from torch.utils.dlpack import to_dlpack as dl

    from camdrop_kernels import _native

    x = torch.zeros(1, 4, 8, 8)
    slots = x.view(torch.int32).view(-1)[:4].view(1, 4)
    slots.copy_(torch.arange(4, dtype=torch.int32).view(1, 4))
    with pytest.raises(ValueError, match="shares memory"):
        torch.ops.camdrop_kernels.camdrop_apply_(x, slots, torch.zeros(1, 4, 2, dtype=torch.int32),
                                                 torch.full((1,), 2.0**100))
    buf = torch.randn(2 * 4 * 5 * 6 + 1)
    s, b, sc = -torch.ones(2, 4, dtype=torch.int32), torch.zeros(2, 1, 1, dtype=torch.int32), torch.ones(2)
    with pytest.raises(ValueError, match="shares memory"):
        _native.apply(dl(buf[:-1].view(2, 4, 5, 6)), dl(buf[1:].view(2, 4, 5, 6)), dl(s), dl(b), dl(sc), 1)
    frozen = np.zeros((2, 4, 5, 6), dtype=np.float32)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _native.apply(dl(torch.zeros(2, 4, 5, 6)), frozen.__dlpack__(max_version=(1, 0)), dl(s), dl(b), dl(sc), 1)
    cam, alpha = torch.randn(2, 5, 6), torch.randn(2, 4)
    slots_buf = torch.zeros(2, 4, dtype=torch.int32)
    rate = slots_buf.view(-1).view(torch.float32)[1:3]
    outs = [slots_buf, torch.zeros(2, 1, 1, dtype=torch.int32), torch.zeros(2), torch.zeros(2, dtype=torch.int64), rate]
    with pytest.raises(ValueError, match="shares memory"):
        _native.build(dl(cam), dl(alpha), dl(torch.tensor(1)), dl(torch.tensor(1.0, dtype=torch.float64)),
                      *[dl(t) for t in outs], 3, 0, 1, 1, 1, 4.0, 0, 1)
