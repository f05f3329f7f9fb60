"""setup.py beside pyproject.toml (which holds the metadata): the optional native CPU kernels.

``csrc/camdrop_cpu.c`` is a C extension with no torch headers (it builds in about a
second). It is optional: without a C compiler the install still succeeds and the CPU path
runs in plain torch, slower but identical bit for bit.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "camdrop_kernels._native",
            sources=["csrc/camdrop_cpu.c"],
            extra_compile_args=["-O3", "-std=c99"],
            optional=True,
        )
    ]
)
