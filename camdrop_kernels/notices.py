"""Warnings attributed to the user's code: the first frame outside torch and this package (the
line that called the model, or the compiled function), not a line of torch's module machinery or
of dynamo's tracer. Python's default filter then shows each once per place, where the user looks."""
from __future__ import annotations

import os
import sys
import warnings

import torch

_INTERNAL = (os.path.dirname(os.path.abspath(torch.__file__)) + os.sep,
             os.path.dirname(os.path.abspath(__file__)) + os.sep)


def warn(message: str, category: type = UserWarning) -> None:
    level = 2  # (stacklevel 2: the caller of this function)
    frame = sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_INTERNAL):
        frame = frame.f_back
        level += 1
    warnings.warn(message, category, stacklevel=level)
