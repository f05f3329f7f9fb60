"""Minimal setup.py beside pyproject.toml (which holds the metadata).

Native code under csrc/ will be built from here once it exists; today nothing is
compiled at install time.
"""
from setuptools import setup

setup()
