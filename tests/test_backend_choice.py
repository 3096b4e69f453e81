"""Backend and delegate selection: auto order, explicit names, env, and errors that say what to install."""

from __future__ import annotations

import sys

import pytest

from edgeloop.runtime import backends
from edgeloop.runtime.delegates import DelegateSpec, edgetpu
from edgeloop.runtime.engine import EngineConfig
from edgeloop.runtime.errors import BackendUnavailable, ConfigError, DelegateUnavailable


@pytest.fixture
def fresh_backends(monkeypatch):
    monkeypatch.setattr(backends, "_cache", {})


def test_unimportable_backend_names_the_package(fresh_backends, monkeypatch):
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)  # import fails as if not installed
    with pytest.raises(BackendUnavailable, match=r"backend 'tflite_runtime' cannot be imported .*: "
                                                 r"pip install 'edgeloop\[tflite\]'"):
        backends.get_backend("tflite_runtime")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    with pytest.raises(BackendUnavailable, match=r"pip install 'ai-edge-litert'"):
        backends.get_backend("litert")


def test_auto_takes_the_first_importable_in_order(fresh_backends, monkeypatch):
    assert backends.AUTO_ORDER == ("litert", "tflite_runtime")
    available = [r["name"] for r in backends.probe_backends() if r["available"]]
    assert backends.get_backend("auto").name == available[0]
    monkeypatch.setattr(backends, "_cache", {})
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime", None)
    with pytest.raises(BackendUnavailable, match="no interpreter backend can be imported"):
        backends.get_backend("auto")


def test_unknown_backend_is_a_config_error():
    with pytest.raises(ConfigError, match=r"backend: unknown backend 'onnx': use one of auto, litert, tflite_runtime"):
        backends.get_backend("onnx")


def test_env_overrides_and_flags_win():
    env = {"EDGELOOP_BACKEND": "tflite_runtime", "EDGELOOP_NUM_THREADS": "3", "EDGELOOP_XNNPACK": "off",
           "EDGELOOP_DELEGATE": "edgetpu", "EDGELOOP_EDGETPU_DEVICE": "usb:0"}
    config = EngineConfig.from_env(env)
    assert (config.backend, config.num_threads, config.xnnpack) == ("tflite_runtime", 3, False)
    assert config.delegate == DelegateSpec("edgetpu", device="usb:0")
    assert EngineConfig.from_env(env, backend="litert", num_threads=1).backend == "litert"
    with pytest.raises(ConfigError, match=r"EDGELOOP_NUM_THREADS: 'many' is not an integer"):
        EngineConfig.from_env({"EDGELOOP_NUM_THREADS": "many"})
    with pytest.raises(ConfigError, match=r"EDGELOOP_XNNPACK: 'maybe' is not a boolean"):
        EngineConfig.from_env({"EDGELOOP_XNNPACK": "maybe"})
    with pytest.raises(ConfigError, match=r"num_threads: 0 is not a positive integer"):
        EngineConfig(num_threads=0)


def test_xnnpack_switch_reaches_the_interpreter():
    from conftest import CORAL

    backend = backends.get_backend("auto")
    on = backend.create(str(CORAL / "mobilenet_v1_0.25_128_quant.tflite"), num_threads=1, xnnpack=True)
    off = backend.create(str(CORAL / "mobilenet_v1_0.25_128_quant.tflite"), num_threads=1, xnnpack=False)
    try:
        if backend.name == "litert":  # its XNNPACK takes INT8 graphs: the ops collapse into DELEGATE nodes
            assert "DELEGATE" in on.op_names()
        assert "DELEGATE" not in off.op_names()
    finally:
        on.close()
        off.close()


@pytest.mark.parametrize("device", ["usb", "usb:0", "pci", "pci:1", ":0"])
def test_edgetpu_device_strings(device):
    edgetpu.validate_device(device)


def test_bad_edgetpu_device_string():
    with pytest.raises(ConfigError, match=r"edgetpu_device: 'usb0' is not an Edge TPU device string: "
                                          r"use usb, usb:N, pci, pci:N or :N"):
        edgetpu.validate_device("usb0")


def test_edgetpu_library_names_per_os():
    assert edgetpu.library_name("Linux") == "libedgetpu.so.1"
    assert edgetpu.library_name("Darwin") == "libedgetpu.1.dylib"
    assert edgetpu.library_name("Windows") == "edgetpu.dll"


def test_missing_delegates_say_what_to_install():
    from edgeloop.runtime.delegates import load_delegate

    backend = backends.get_backend("auto")
    with pytest.raises(DelegateUnavailable, match=r"Edge TPU delegate unavailable \(no Edge TPU found; .*"
                                                  r"libedgetpu\.so\.1.*\): install the Edge TPU runtime"):
        load_delegate(backend, DelegateSpec("edgetpu", device="usb:0"))
    with pytest.raises(DelegateUnavailable, match=r"GPU delegate unavailable .*build or install "
                                                  r"libtensorflowlite_gpu_delegate\.so"):
        load_delegate(backend, DelegateSpec("gpu"))
    with pytest.raises(DelegateUnavailable, match=r"external delegate library /nonexistent/libx\.so does not exist"):
        load_delegate(backend, DelegateSpec("external", library="/nonexistent/libx.so"))
    with pytest.raises(ConfigError, match="the external delegate needs a library path"):
        DelegateSpec("external")
    with pytest.raises(ConfigError, match="unknown delegate 'npu'"):
        DelegateSpec("npu")


def test_external_delegate_that_is_not_a_delegate(tmp_path):
    """A real shared library without the delegate entry points is refused with the reason."""
    import ctypes.util

    from edgeloop.runtime.delegates import load_delegate

    libm = ctypes.util.find_library("m")
    assert libm, "libm is on every Linux"
    with pytest.raises(DelegateUnavailable, match=r"external delegate unavailable \(.*libm\.so\.6 is not a TFLite delegate \(it lacks tflite_plugin_create_delegate, tflite_plugin_destroy_delegate\)\)"):
        load_delegate(backends.get_backend("auto"), DelegateSpec("external", library=libm))


def test_tflite_runtime_with_numpy2_is_refused_up_front():
    from edgeloop.runtime.backends.tflite_runtime import numpy_compatible

    assert numpy_compatible("2.14.0", "1.26.4")
    assert not numpy_compatible("2.14.0", "2.4.6")
    assert not numpy_compatible("2.13.1", "2.0.0rc1")
    assert numpy_compatible("2.15.0", "2.1.0")  # a hypothetical release built for numpy 2
