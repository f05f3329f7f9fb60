"""``python -m camdrop_kernels.triton_backend.compile_check``: ahead-of-time compiles, kept at its old
name (it lives in tools/compile_check.py)."""
import sys

from .tools.compile_check import *  # noqa: F401,F403
from .tools.compile_check import main

if __name__ == "__main__":
    sys.exit(main())
