"""setup.py beside pyproject.toml (which holds the metadata): the optional native extensions.

``csrc/`` is C++17 with no torch headers (it builds in a few seconds). Both extensions are
optional: without a C++ compiler the install still succeeds and the CPU path runs in plain torch,
slower but identical bit for bit.

- ``camdrop_kernels._native``: the product (build, apply, forward).
- ``camdrop_kernels._native_testing``: hooks into the stages for the tests (``-DCAMDROP_TESTING``,
  from the stage sources it tests plus ``csrc/testing.cpp``); never imported by the package. Set
  ``CAMDROP_NATIVE_TESTING=0`` to leave it out (a packaged build).
- ``camdrop_kernels._C``: the registered ops' CPU kernels and autograd in C++ against torch's
  headers (``csrc/torch/ops.cpp`` over the same stages), built when torch is importable here (the
  build environment lists it). It ties the build to that torch's C++ ABI: where it does not load
  (another torch at run time), the package warns and uses the Python kernels. Set
  ``CAMDROP_TORCH_OPS=0`` to leave it out.
"""
import os

from setuptools import Extension, setup

HEADERS = [f"csrc/{name}.h" for name in ("common", "errors", "views", "py", "dlpack", "threads", "philox", "floats",
                                          "order_keys", "ranking", "geometry", "build", "apply_kernels", "apply",
                                          "forward")]
FLAGS = ["-O3", "-std=c++17", "-fvisibility=hidden", "-fno-exceptions", "-fno-rtti"]


def native(name, stages, macros=()):
    return Extension(name, sources=[f"csrc/{stage}.cpp" for stage in stages], depends=HEADERS, language="c++",
                     extra_compile_args=FLAGS, define_macros=list(macros), optional=True)


# The stages (no Python, no torch), then each binding's own files.
STAGES = ["errors", "views", "threads", "philox", "ranking", "geometry", "build", "apply_kernels", "apply", "forward"]
extensions = [native("camdrop_kernels._native", STAGES + ["dlpack", "pyerrors", "module"])]
if os.environ.get("CAMDROP_NATIVE_TESTING", "1") != "0":
    extensions.append(native("camdrop_kernels._native_testing",
                             ["errors", "views", "threads", "ranking", "dlpack", "pyerrors", "testing"],
                             [("CAMDROP_TESTING", "1")]))



def torch_ops():
    """The _C extension, or None when torch (or its headers) is not importable in this build."""
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return None
    abi = int(getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", True))
    return Extension(
        "camdrop_kernels._C", sources=[f"csrc/{stage}.cpp" for stage in STAGES] + ["csrc/torch/ops.cpp"],
        depends=HEADERS, language="c++", include_dirs=cpp_extension.include_paths(),
        library_dirs=cpp_extension.library_paths(), libraries=["c10", "torch", "torch_cpu", "torch_python"],
        extra_compile_args=["-O3", "-std=c++20", "-fvisibility=hidden", f"-D_GLIBCXX_USE_CXX11_ABI={abi}"],
        optional=True)


if os.environ.get("CAMDROP_TORCH_OPS", "1") != "0":
    ext = torch_ops()
    if ext is not None:
        extensions.append(ext)

setup(ext_modules=extensions)
