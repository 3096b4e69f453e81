"""Only for the native kernels: cffi compiles them into the package at install time.
Everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["runtime/kernels/build_native.py:ffibuilder"])
