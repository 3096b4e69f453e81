"""The ``edgeloop`` command, run as a user runs it (the installed console script)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import CORAL, IMAGES, REPO

EDGELOOP = str(Path(sys.executable).parent / "edgeloop")
V2 = str(CORAL / "mobilenet_v2_1.0_224_quant.tflite")
LABELS = str(CORAL / "imagenet_labels.txt")


def edgeloop(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([EDGELOOP, *args], capture_output=True, text=True, timeout=120)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_infer_json_schema():
    proc = edgeloop("infer", V2, str(IMAGES / "cat.bmp"), str(IMAGES / "parrot.jpg"),
                    "--top", "2", "--labels", LABELS, "--json")
    data = json.loads(proc.stdout)
    assert data["model"]["file"] == V2 and data["model"]["registered"] is False
    assert [r["input"] for r in data["results"]] == [str(IMAGES / "cat.bmp"), str(IMAGES / "parrot.jpg")]
    parrot = data["results"][1]
    assert set(parrot) == {"input", "top", "latency_ms"}
    assert len(parrot["top"]) == 2 and parrot["top"][0]["index"] == 89
    assert parrot["top"][0]["label"] == "macaw" and 0 < parrot["top"][0]["score"] <= 1
    assert parrot["latency_ms"] > 0


def test_save_outputs_are_the_raw_tensors(tmp_path):
    out = tmp_path / "out.npz"
    edgeloop("infer", V2, str(IMAGES / "bird.bmp"), "--save-outputs", str(out), "--json")
    from edgeloop.runtime.engine import Engine

    with Engine() as engine:
        model = engine.load(V2)
        expected = model.run(model.prepare(IMAGES / "bird.bmp"))[0]
    with np.load(out) as saved:
        assert list(saved) == ["in0_out0"]
        assert saved["in0_out0"].dtype == np.uint8 and np.array_equal(saved["in0_out0"], expected)


def test_npy_input_as_is_and_a_wrong_one_named(tmp_path):
    from PIL import Image

    good = tmp_path / "good.npy"
    np.save(good, np.asarray(Image.open(IMAGES / "parrot.jpg").convert("RGB").resize((224, 224)))[None])
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((1, 100, 100, 3), np.float32))
    proc = edgeloop("infer", V2, str(bad), str(good), "--json", ok=False)
    assert proc.returncode == 2
    assert "InputError: input 0 ('input') needs shape [1, 224, 224, 3] dtype uint8, got shape [1, 100, 100, 3] " \
           "dtype float32" in proc.stderr
    rows = json.loads(proc.stdout)["results"]
    assert "error" in rows[0] and rows[1]["top"][0]["index"] == 89  # the good one still answered


def test_infer_errors_are_typed_and_exit_2(tmp_path):
    proc = edgeloop("infer", str(tmp_path / "none.tflite"), str(IMAGES / "cat.bmp"), ok=False)
    assert proc.returncode == 2 and "ModelNotFound: no model named" in proc.stderr
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image")
    proc = edgeloop("infer", V2, str(junk), ok=False)
    assert proc.returncode == 2 and "InputError: cannot read image" in proc.stderr


def test_bundled_demo_model_classifies_its_samples():
    for digit in (0, 3, 7):
        proc = edgeloop("infer", "digits", str(REPO / "models" / "samples" / f"digit_{digit}.png"), "--json")
        assert json.loads(proc.stdout)["results"][0]["top"][0]["label"] == str(digit)


def test_doctor_json():
    data = json.loads(edgeloop("doctor", "--json").stdout)
    assert {b["name"] for b in data["backends"]} == {"litert", "tflite_runtime"}
    assert data["default_backend"] in ("litert", "tflite_runtime")
    assert data["numpy"] == np.__version__
    edgetpu = next(d for d in data["delegates"] if d["name"] == "edgetpu")
    assert edgetpu["available"] is False and "libedgetpu1-std" in edgetpu["fix"]
    assert data["hardware"]["cpu"]["cores"] >= 1 and data["threads"]["default"] >= 1


def test_models_list_verify_inspect(coral_manifest):
    listed = json.loads(edgeloop("models", "list", "--json", "--manifest", str(coral_manifest)).stdout)
    names = {m["name"] for m in listed["models"]}
    assert {"digits", "mobilenet_v2", "embedder"} <= names
    verified = json.loads(edgeloop("models", "verify", "digits", "--json").stdout)
    assert verified["ok"] and len(verified["models"][0]["golden"]) == 10
    report = json.loads(edgeloop("models", "inspect", str(CORAL / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"),
                                 "--json").stdout)
    assert report["edgetpu"] is True and report["custom_ops"] == ["edgetpu-custom-op"]
    assert report["inputs"][0]["quantization"] == {"scale": 0.0078125, "zero_point": 128}
    text = edgeloop("models", "inspect", V2).stdout
    assert "fully integer: yes" in text and "Edge TPU custom ops: no" in text and "CONV_2Dx36" in text
    bad = edgeloop("models", "inspect", str(CORAL / "model_invoking_error.tflite"), ok=False)
    assert bad.returncode == 1 and "FAILED" in bad.stdout and "fake-op-double" in bad.stdout


def test_models_verify_fails_on_a_tampered_file(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes((CORAL / "mobilenet_v1_0.25_128_quant.tflite").read_bytes())
    (tmp_path / "m.toml").write_text(f"schema = 1\n[models.m]\nversion = '1'\nfile = 'm.tflite'\n"
                                     f"sha256 = '{'1' * 64}'\n")
    proc = edgeloop("models", "verify", "m", "--manifest", str(tmp_path / "m.toml"), ok=False)
    assert proc.returncode == 1 and "FAIL m" in proc.stdout and "has sha256 cb273c23" in proc.stdout


def test_bench_json_keys():
    data = json.loads(edgeloop("bench", str(CORAL / "mobilenet_v1_0.25_128_quant.tflite"), "--runs", "20",
                               "--warmup", "2", "--threads", "1", "--json").stdout)
    for key in ("p50_ms", "p95_ms", "p99_ms", "mean_ms", "std_ms", "jitter_ms", "raw_p50_ms",
                "overhead_ratio", "load_ms", "first_ms"):
        assert isinstance(data[key], float), key
    assert data["runs"] >= 20 and data["threads"] == 1
    assert data["p50_ms"] <= data["p95_ms"] <= data["p99_ms"]
    assert 0.5 < data["overhead_ratio"] < 2.0


def test_bad_flag_values_are_named():
    proc = edgeloop("infer", "digits", "x.png", "--threads", "0", ok=False)
    assert proc.returncode == 2 and "num_threads: 0 is not a positive integer" in proc.stderr
    proc = edgeloop("infer", "digits", "x.png", "--delegate", "edgetpu", "--edgetpu-device", "usb0", ok=False)
    assert "edgetpu_device: 'usb0' is not an Edge TPU device string" in proc.stderr


def test_bench_regional_drives_a_small_fleet_exactly_once_and_refuses_bad_flags():
    """The fleet simulator's code path at a small scale (its figures come from `edgeloop bench
    regional --devices 1000`, not from here): every record enqueued is stored once and acked."""
    proc = edgeloop("bench", "regional", "--devices", "12", "--processes", "2", "--seconds", "3", "--rate", "10",
                    "--json")
    r = json.loads(proc.stdout)
    assert r["devices"] == 12 and r["processes"] == 2 and r["enqueued"] == 12 * 10 * 3
    assert r["exactly_once"] and r["lost"] == 0 and r["left_on_devices"] == 0, r
    assert r["ingest_records_per_s"] > 0 and 0 < r["enqueue_to_ack_p50_ms"] <= r["enqueue_to_ack_p99_ms"]
    bad = edgeloop("bench", "regional", "--devices", "0", ok=False)
    assert bad.returncode == 2 and "--devices" in bad.stderr
