"""The native kernels (cffi compiles them into the package at install time) and the package
list; everything else is in pyproject.toml.

The design card fixes the top-level folders; each installs as ``edgeloop.<folder>`` so that
generic names like ``tools`` or ``models`` never clash in site-packages. Subpackages are found
by setuptools, so a new one is in the wheel without being listed (tests/test_packaging.py).
"""

from setuptools import find_packages, setup

TOP = ("runtime", "models", "sync", "firmware_bridge", "tools")

setup(
    packages=[p for top in TOP for p in (f"edgeloop.{top}", *(f"edgeloop.{top}.{s}" for s in find_packages(top)))],
    package_dir={f"edgeloop.{top}": top for top in TOP},
    cffi_modules=["runtime/kernels/build_native.py:ffibuilder"],
)
