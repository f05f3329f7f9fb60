"""The package's Python files one bound layer's training forward and backward pass through.

Prints each call into a file of ``camdrop_kernels`` in order (a "stay" is a run of calls in one
file) and the caller -> callee file edges, so a climb back up (a lower floor calling a higher one)
shows. Run with ``PYTHONPATH=<tree>`` to compare trees: ``python tools/call_walk.py``.
"""
import os
import sys

import torch
from torch import nn

import camdrop_kernels as ck

ROOT = os.path.dirname(ck.__file__)


def _walk(step):
    stays, edges, frames = [], {}, []

    def profile(frame, event, arg):
        if event != "call" or not frame.f_code.co_filename.startswith(ROOT):
            return
        here = os.path.relpath(frame.f_code.co_filename, ROOT)
        frames.append(f"{here}:{frame.f_code.co_name}")
        if not stays or stays[-1] != here:
            stays.append(here)
        caller = frame.f_back
        while caller is not None and not caller.f_code.co_filename.startswith(ROOT):
            caller = caller.f_back
        if caller is not None:
            there = os.path.relpath(caller.f_code.co_filename, ROOT)
            if there != here:
                edges[(there, here)] = edges.get((there, here), 0) + 1

    sys.setprofile(profile)
    try:
        step()
    finally:
        sys.setprofile(None)
    return stays, edges, frames


def main() -> None:
    torch.manual_seed(0)
    head = nn.Linear(16, 5)
    layer = ck.CamDrop2d(drop_prob=0.2, block_size=3, classifier=head).train()
    x = torch.randn(2, 16, 8, 8, requires_grad=True)
    labels = torch.tensor([1, 3])
    with ck.targets(layer, labels):
        layer(x).sum().backward()  # warm: first-call caches
        stays, edges, _ = _walk(lambda: layer(x))
        print("forward:", " -> ".join(stays))
        print(f"  {len(set(stays))} files, {len(stays)} stays; edges:", ", ".join(f"{a}->{b}" for a, b in edges))
        out = layer(x).sum()
        _, _, frames = _walk(out.backward)
        print(f"backward: {len(frames)} Python frames of the package:", frames)


if __name__ == "__main__":
    main()
