"""cffi (API mode) builder for the native kernels, run at install time by setup.py.

``make_builder`` also serves the AddressSanitizer build of the test suite, which
compiles the same sources under another module name with ``-fsanitize=address``.
"""

from __future__ import annotations

from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
# No -ffast-math, and no FMA contraction: results must equal the numpy reference bit for bit.
CFLAGS = ["-O3", "-std=c99", "-ffp-contract=off", "-fno-math-errno", "-Wall"]


DEFAULT_MODULE = "edgeloop.runtime.kernels._native"


def make_builder(module: str = DEFAULT_MODULE, extra_cflags: list[str] | None = None,
                 extra_ldflags: list[str] | None = None) -> FFI:
    ffi = FFI()
    header = (HERE / "native.h").read_text()
    ffi.cdef("\n".join(line for line in header.splitlines() if not line.startswith(("#", "/*"))))
    # setup.py builds from the checkout's root: a relative path keeps the build independent of
    # where the checkout lives. Other builds (the ASan one) compile elsewhere: absolute.
    source = HERE / "native.c"
    if module == DEFAULT_MODULE and HERE.is_relative_to(Path.cwd()):
        source = source.relative_to(Path.cwd())
    ffi.set_source(module, '#include "native.h"', sources=[str(source)], include_dirs=[str(HERE)],
                   extra_compile_args=CFLAGS + (extra_cflags or []), extra_link_args=extra_ldflags or [],
                   libraries=["m", "pthread"])
    return ffi


ffibuilder = make_builder()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
