"""Bad models give typed errors that name the problem, and the process keeps serving."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from conftest import CORAL, IMAGES, coral_entry, write_manifest

from edgeloop.models.store import ModelStore
from edgeloop.runtime.engine import Engine, EngineConfig
from edgeloop.runtime.errors import DelegateRequired, ModelIntegrityError, ModelNotFound, ModelRejected


def still_serving(engine: Engine) -> None:
    assert engine.load("mobilenet_v1_025").classify(IMAGES / "parrot.jpg").best.index == 89


def test_model_with_failing_custom_op_is_rejected(engine):
    with pytest.raises(ModelRejected, match=r"model_invoking_error\.tflite failed the isolated check: "
                                            r".*unresolved custom op: fake-op-double"):
        engine.load(CORAL / "model_invoking_error.tflite")
    still_serving(engine)


def test_truncated_model_is_rejected(engine, tmp_path):
    path = tmp_path / "truncated.tflite"
    path.write_bytes((CORAL / "mobilenet_v2_1.0_224_quant.tflite").read_bytes()[:200_000])
    # LiteRT verifies the flatbuffer ("not a valid Flatbuffer"); tflite-runtime 2.14 reads past the
    # end of this very file and says "No subgraph in the model", or segfaults (seen here), which
    # only the isolated child feels.
    with pytest.raises(ModelRejected, match=r"truncated\.tflite (failed the isolated check: .*(not a valid Flatbuffer"
                                            r"|No subgraph in the model)"
                                            r"|crashed the interpreter in the isolated check \(killed by SIGSEGV\))"):
        engine.load(path)
    still_serving(engine)


def test_random_bytes_are_rejected(engine, tmp_path):
    path = tmp_path / "noise.tflite"
    path.write_bytes(np.random.default_rng(1).bytes(64 * 1024))  # fixed bytes: the same test every run
    with pytest.raises(ModelRejected, match=r"noise\.tflite (failed|crashed the interpreter in) the isolated check"):
        engine.load(path)
    still_serving(engine)


def test_empty_file_is_rejected(engine, tmp_path):
    path = tmp_path / "empty.tflite"
    path.write_bytes(b"")
    with pytest.raises(ModelRejected, match=r"empty\.tflite"):
        engine.load(path)


def test_crash_in_the_child_is_reported_not_inherited(engine, tmp_path, monkeypatch):
    """If the interpreter segfaults on a model, only the child dies."""
    from edgeloop.runtime import vetting

    path = tmp_path / "bomb.tflite"
    shutil.copy(CORAL / "mobilenet_v1_0.25_128_quant.tflite", path)
    real_run = vetting.subprocess.run

    def crashing_run(cmd, **kw):
        # The same child, told to die by SIGSEGV after opening the model, as a bad flatbuffer would.
        cmd = [cmd[0], "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
        return real_run(cmd, **kw)

    monkeypatch.setattr(vetting.subprocess, "run", crashing_run)
    monkeypatch.setenv("EDGELOOP_CACHE_DIR", "off")  # these bytes passed before: check them anyway
    with pytest.raises(ModelRejected, match=r"bomb\.tflite crashed the interpreter in the isolated check "
                                            r"\(killed by SIGSEGV\)"):
        engine.load(path)
    monkeypatch.undo()
    still_serving(engine)


def test_wrong_sha256_is_an_integrity_error(engine, tmp_path, backend_name):
    manifest = write_manifest(tmp_path / "m.toml", coral_entry("tampered", "mobilenet_v1_0.25_128_quant.tflite",
                                                                sha256="0" * 64))
    eng = Engine(EngineConfig(backend=backend_name), ModelStore([manifest]))
    with pytest.raises(ModelIntegrityError, match=r"model 'tampered' \(cpu\): .*mobilenet_v1_0\.25_128_quant\.tflite "
                                                  r"has sha256 cb273c23.* the manifest .* says 0000"):
        eng.load("tampered")
    # With --allow-unverified it is checked in a child process, then served.
    eng = Engine(EngineConfig(backend=backend_name, allow_unverified=True), ModelStore([manifest]))
    assert eng.load("tampered").classify(IMAGES / "parrot.jpg").best.index == 89
    eng.close()
    still_serving(engine)


def test_unknown_model_name(engine):
    with pytest.raises(ModelNotFound, match=r"no model named 'nope' \(registered: digits, digits_small, embedder, lstm_mnist, "
                                            r"mobilenet_v1_025, mobilenet_v2, vibration, vibration_small\) and no such file"):
        engine.load("nope")


def test_edgetpu_model_falls_back_loudly_to_its_registered_cpu_variant(tmp_path, backend_name, caplog):
    from edgeloop.models.store import sha256_of

    tpu = CORAL / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
    entry = coral_entry("v1_025", "mobilenet_v1_0.25_128_quant.tflite")
    entry += f'\n[models.v1_025.variants.edgetpu]\nfile = "{tpu}"\nsha256 = "{sha256_of(tpu)}"\n'
    manifest = write_manifest(tmp_path / "m.toml", entry)
    from edgeloop.runtime.delegates import DelegateSpec

    eng = Engine(EngineConfig(backend=backend_name, delegate=DelegateSpec("edgetpu")), ModelStore([manifest]))
    with caplog.at_level("WARNING", logger="edgeloop.engine"):
        model = eng.load("v1_025")
    assert model.artifact.file.name == "mobilenet_v1_0.25_128_quant.tflite"
    assert model.delegate is None
    assert "no Edge TPU found" in model.fallback and "libedgetpu1-std" in model.fallback
    lines = [r.getMessage() for r in caplog.records if "fallback" in r.getMessage()]
    assert len(lines) == 1 and "wanted edgetpu but runs on the CPU variant" in lines[0]
    stats = eng.stats()
    assert stats["fallbacks"] == 1 and stats["fallback_events"][0]["wanted"] == "edgetpu"
    assert stats["models"]["v1_025"]["fallback"] == model.fallback
    assert model.classify(IMAGES / "parrot.jpg").best.index == 89
    eng.close()


def test_edgetpu_model_without_cpu_variant_names_the_delegate_and_fix(tmp_path, backend_name):
    from edgeloop.models.store import sha256_of

    tpu = CORAL / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
    manifest = write_manifest(tmp_path / "m.toml", f'\n[models.tpu_only]\nversion = "1"\n'
                              f'[models.tpu_only.variants.edgetpu]\nfile = "{tpu}"\nsha256 = "{sha256_of(tpu)}"\n')
    eng = Engine(EngineConfig(backend=backend_name), ModelStore([manifest]))
    with pytest.raises(DelegateRequired, match=r"model 'tpu_only' is compiled for the edgetpu delegate and has no "
                                               r"CPU variant; Edge TPU delegate unavailable \(no Edge TPU found.*"
                                               r"libedgetpu1-std.*register a CPU variant"):
        eng.load("tpu_only")
    # The same file by path, alone in its folder: same error, nothing loaded.
    lone = tmp_path / "alone"
    lone.mkdir()
    shutil.copy(tpu, lone / tpu.name)
    with pytest.raises(DelegateRequired, match="no CPU variant"):
        eng.load(lone / tpu.name)
    assert eng.stats()["models"] == {}


def test_edgetpu_file_by_path_pairs_with_its_sibling(engine, caplog):
    with caplog.at_level("WARNING", logger="edgeloop.engine"):
        model = engine.load(CORAL / "mobilenet_v1_0.25_128_quant_edgetpu.tflite")
    assert model.artifact.file == CORAL / "mobilenet_v1_0.25_128_quant.tflite"
    assert model.fallback and "libedgetpu" in model.fallback
    assert any("fallback" in r.getMessage() for r in caplog.records)


def test_a_passed_check_is_remembered_by_content_and_a_failure_is_not(engine, tmp_path, monkeypatch):
    from edgeloop.runtime import vetting

    calls: list[str] = []
    real_run = vetting.subprocess.run

    def counting_run(cmd, **kw):
        calls.append(kw["input"])
        return real_run(cmd, **kw)

    monkeypatch.setattr(vetting.subprocess, "run", counting_run)
    monkeypatch.setenv("EDGELOOP_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "m.tflite"
    model.write_bytes((CORAL / "mobilenet_v1_0.25_128_quant.tflite").read_bytes())
    engine.load(model).close()
    engine.load(model).close()
    assert len(calls) == 1  # the second load trusted the remembered pass for these bytes
    model.write_bytes((CORAL / "keras_lstm_mnist_ptq.tflite").read_bytes())  # same path, new bytes
    engine.load(model).close()
    assert len(calls) == 2
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\0" * 1000)
    for _ in range(2):
        with pytest.raises(ModelRejected):
            engine.load(bad)
    assert len(calls) == 4  # failures are checked again every time
    monkeypatch.setenv("EDGELOOP_CACHE_DIR", "off")
    engine.load(model).close()
    assert len(calls) == 5


def test_a_hanging_check_is_cut_off_and_rejected(tmp_path, monkeypatch, backend_name):
    from edgeloop.runtime import vetting

    path = tmp_path / "slow.tflite"
    shutil.copy(CORAL / "mobilenet_v1_0.25_128_quant.tflite", path)
    real_run = vetting.subprocess.run
    monkeypatch.setattr(vetting.subprocess, "run",
                        lambda cmd, **kw: real_run([cmd[0], "-c", "import time; time.sleep(30)"], **kw))
    monkeypatch.setenv("EDGELOOP_CACHE_DIR", "off")
    eng = Engine(EngineConfig(backend=backend_name, vet_timeout_s=1.0), ModelStore(bundled=False))
    with pytest.raises(ModelRejected, match=r"the isolated check of .*slow\.tflite did not finish in 1 s \(hang\)"):
        eng.load(path)
