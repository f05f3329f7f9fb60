"""The native kernels' test hooks: ``camdrop_kernels._native_testing``, a second extension built
from the same stage sources with -DCAMDROP_TESTING (see csrc/README.md). The product (``_native``)
does not contain them."""
import os

import pytest


def load_hooks():
    """The hooks module; skips the test where it is not built, and fails in CI (CI=true), where
    setup.py builds it."""
    try:
        from camdrop_kernels import _native_testing
    except ImportError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"camdrop_kernels._native_testing must be built in CI ({error}); "
                        "setup.py builds it unless CAMDROP_NATIVE_TESTING=0")
        pytest.skip("the native test hooks (camdrop_kernels._native_testing) are not built: "
                    "rebuild with a C++ compiler and CAMDROP_NATIVE_TESTING unset")
    return _native_testing
