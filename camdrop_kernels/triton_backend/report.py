"""``python -m camdrop_kernels.triton_backend.report``: the static report, kept at its old name (it
lives in tools/report.py)."""
import sys

from .tools.report import *  # noqa: F401,F403
from .tools.report import main

if __name__ == "__main__":
    sys.exit(main())
