"""The C kernels under AddressSanitizer: the same sources, built with -fsanitize=address,
run the kernel and fuzz tests in a child process. An out-of-bounds access aborts it.

A control module with a deliberate one-byte overflow, run the same way, proves the
sanitizer is really watching.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ASAN_FLAGS = ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1", "-g"]


def libasan() -> str:
    cc = sysconfig.get_config_var("CC").split()[0] or "gcc"
    path = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not path or not Path(path).exists():
        pytest.fail(f"libasan.so not found through {cc} (Debian: apt-get install libasan8); "
                    "the ASan target cannot run", pytrace=False)
    return str(Path(path).resolve())


def build(tmp: Path, name: str, cdef: str, source: str, sources: list[str] | None = None) -> Path:
    from cffi import FFI

    ffi = FFI()
    ffi.cdef(cdef)
    ffi.set_source(name, source, sources=sources or [], include_dirs=[str(REPO / "runtime" / "kernels")],
                   extra_compile_args=ASAN_FLAGS + ["-ffp-contract=off", "-std=c99"],
                   extra_link_args=["-fsanitize=address"], libraries=["m"])
    return Path(ffi.compile(tmpdir=str(tmp)))


def run_under_asan(args: list[str], module: Path, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "LD_PRELOAD": libasan(), "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0",
           "EDGELOOP_KERNELS_NATIVE": str(module), **extra_env}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900)


@pytest.fixture(scope="module")
def asan_kernels(tmp_path_factory) -> Path:
    from edgeloop.runtime.kernels.build_native import make_builder

    tmp = tmp_path_factory.mktemp("asan")
    ffi = make_builder("_native_asan", extra_cflags=ASAN_FLAGS, extra_ldflags=["-fsanitize=address"])
    return Path(ffi.compile(tmpdir=str(tmp)))


def test_the_sanitizer_catches_an_overflow(tmp_path):
    control = build(tmp_path, "_overflow", "void overflow(int n);",
                    "#include <stdlib.h>\nvoid overflow(int n) { volatile char *p = malloc(n); p[n] = 1; free((void *)p); }")
    code = (f"import importlib.util as u; s = u.spec_from_file_location('_overflow', {str(control)!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m); m.lib.overflow(16)")
    proc = run_under_asan(["-c", code], control)
    assert proc.returncode != 0 and "heap-buffer-overflow" in proc.stderr, proc.stderr[-2000:]


def test_kernels_are_clean_under_asan(asan_kernels):
    which = run_under_asan(["-c", "from edgeloop.runtime import kernels; from edgeloop.runtime.kernels import "
                                  "native_path; print(kernels.path_for('preprocess'), native_path._mod.__file__)"],
                           asan_kernels)
    assert which.stdout.split()[0] == "c" and "_native_asan" in which.stdout, which.stdout + which.stderr
    # -s: the sanitizer's report goes to fd 2, which pytest's capture would swallow as it dies.
    proc = run_under_asan(["-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "tests/test_kernels.py",
                           "tests/test_kernels_fuzz.py", "-k", "not numba"],
                          asan_kernels, EDGELOOP_FUZZ_PATHS="c", EDGELOOP_FUZZ_EXAMPLES="300")
    assert "AddressSanitizer" not in proc.stderr, proc.stderr[-4000:]
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
