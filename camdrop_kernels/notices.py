"""Warnings attributed to the user's code: the line that called the model (the caller of the
outermost ``nn.Module`` call on the stack: timm's, torchvision's or an fx-generated forward are
the model's own lines, not the user's), else the first frame outside torch and this package (a
function called directly). Python's default filter then shows each once per place."""
from __future__ import annotations

import os
import sys
import warnings

import torch
import torch.nn.modules.module as _module

_INTERNAL = (os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
             os.path.dirname(os.path.abspath(__file__)) + os.sep)
_MODULE_CALL = os.path.abspath(_module.__file__)  # nn.Module.__call__ and its hooks run here


def warn(message: str, category: type = UserWarning) -> None:
    frames = []
    frame = sys._getframe(1)
    while frame is not None:
        frames.append(os.path.abspath(frame.f_code.co_filename))
        frame = frame.f_back
    calls = [i for i, name in enumerate(frames) if name == _MODULE_CALL]
    start = calls[-1] + 1 if calls else 0  # (past the outermost module call)
    user = next((i for i in range(start, len(frames)) if not frames[i].startswith(_INTERNAL)), None)
    # stacklevel 2 is frames[0], the caller of this function (the fallback when no frame qualifies)
    warnings.warn(message, category, stacklevel=2 if user is None else user + 2)
