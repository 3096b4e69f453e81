"""The same contract on every backend (run on LiteRT, and on tflite-runtime in its numpy<2 venv)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import IMAGES, PHOTOS

from edgeloop.runtime.errors import InferenceError, InputError

# ImageNet class ids a correct classifier gives each photo (cats: 281-287; Grace Hopper
# wears a military uniform (653) under an academic-gown-like jacket (401) or suit (835)).
EXPECTED = {
    "cat.bmp": set(range(281, 288)),
    "bird.bmp": {20},  # chickadee
    "parrot.jpg": {89},  # macaw
    "sunflower.bmp": {986},  # daisy: ImageNet has no sunflower
    "grace_hopper.bmp": {653, 401, 835},
}


def bare_outputs(engine, model, array: np.ndarray) -> list[np.ndarray]:
    """The same input through a bare backend interpreter, with the engine's settings."""
    module = engine.backend._module
    bare = module.Interpreter(model_path=str(model.artifact.file), num_threads=engine.config.num_threads,
                              experimental_op_resolver_type=module.OpResolverType.AUTO)
    bare.allocate_tensors()
    bare.set_tensor(bare.get_input_details()[0]["index"], array)
    bare.invoke()
    return [bare.get_tensor(d["index"]) for d in bare.get_output_details()]


@pytest.mark.parametrize("name", ["mobilenet_v1_025", "mobilenet_v2"])
def test_classifies_photos_bit_identical_to_bare_interpreter(engine, name):
    model = engine.load(name)
    for photo in PHOTOS:
        array = model.prepare(IMAGES / photo)
        outputs = model.run(array)
        result = model.decode(outputs, top_k=3)
        assert result.best.index in EXPECTED[photo], (photo, result.to_dict())
        assert result.best.label is not None and result.best.score > 0.1
        reference = bare_outputs(engine, model, array)
        assert len(outputs) == len(reference)
        for ours, theirs in zip(outputs, reference):
            assert ours.dtype == theirs.dtype and np.array_equal(ours, theirs), photo


def test_embedding_is_1024d_and_separates_photos(engine, tmp_path):
    model = engine.load("embedder")
    cat = model.infer(IMAGES / "cat.bmp")
    bird = model.infer(IMAGES / "bird.bmp")
    image = Image.open(IMAGES / "cat.bmp")
    w, h = image.size
    cropped = image.crop((w // 20, h // 20, w - w // 20, h - h // 20))  # 5% off each side
    cat_crop = model.infer(cropped)
    assert cat.vector.shape == (1024,) and cat.vector.dtype == np.float32
    assert abs(float(np.linalg.norm(cat.vector)) - 1.0) < 1e-5
    assert cat.cosine(cat_crop) > cat.cosine(bird)
    assert cat.cosine(cat_crop) > 0.8


def test_lstm_reads_the_handwritten_nine(engine):
    model = engine.load("lstm_mnist")
    assert model.inputs[0].shape == (1, 28, 28)
    result = model.classify(IMAGES / "mnist_nine.bmp", top_k=1)
    assert result.best.index == 9


def test_wrong_input_shape_and_dtype_are_typed_errors(engine):
    model = engine.load("mobilenet_v1_025")
    with pytest.raises(InputError, match=r"needs shape \[1, 128, 128, 3\] dtype uint8, got shape \[1, 64, 64, 3\]"):
        model.run(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(InputError, match=r"dtype uint8, got shape \[1, 128, 128, 3\] dtype float32"):
        model.run(np.zeros((1, 128, 128, 3), np.float32))
    with pytest.raises(InputError, match="takes 1 input"):
        model.run()
    # still serving
    assert model.classify(IMAGES / "parrot.jpg").best.index == 89


def test_threads_get_their_own_interpreters_and_agree(engine):
    model = engine.load("mobilenet_v1_025")
    arrays = [model.prepare(IMAGES / p) for p in PHOTOS]
    expected = [model.run(a)[0] for a in arrays]
    mismatches: list[str] = []

    def worker() -> None:
        for _ in range(3):
            for a, e in zip(arrays, expected):
                if not np.array_equal(model.run(a)[0], e):
                    mismatches.append(threading.current_thread().name)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mismatches == []
    assert model.stats.interpreters == 5  # the loading thread's + one per worker
    assert model.stats.invocations >= 4 * 3 * len(PHOTOS)


def test_close_frees_interpreters_and_refuses_more_work(engine):
    model = engine.load("mobilenet_v1_025")
    array = model.prepare(IMAGES / "cat.bmp")
    out = model.run(array)[0]
    model.close()
    with pytest.raises(InferenceError, match="closed"):
        model.run(array)
    assert out.sum() > 0  # results are copies, still valid after close


def test_quantization_parameters_are_the_models_own(engine):
    model = engine.load("mobilenet_v2")
    q = model.inputs[0].quantization
    assert q is not None and q.scale == pytest.approx(1 / 128) and q.zero_point == 128
    scores = model.classify(IMAGES / "bird.bmp", top_k=1001)
    total = sum(c.score for c in scores.top)
    assert total == pytest.approx(1.0, abs=0.05)  # dequantized softmax sums to ~1


def test_fill_input_writes_in_place_and_drops_its_view(engine):
    """Kernels write straight into the input tensor; invoke still works (no view left alive)."""
    model = engine.load("mobilenet_v1_025")
    array = model.prepare(IMAGES / "bird.bmp")
    expected = model.run(array)[0]
    interp = model._interpreter()
    seen = []

    def writer(view: np.ndarray) -> None:
        seen.append((view.shape, view.dtype, view.flags.writeable))
        view[...] = array

    interp.fill_input(0, writer)
    interp.invoke()  # the backends refuse to invoke while a view into their buffers is alive
    assert seen == [((1, 128, 128, 3), np.dtype(np.uint8), True)]
    assert np.array_equal(interp.output(0), expected)


def test_multiple_inputs_and_outputs_by_their_own_quantization(engine):
    """tests/data/multi_io.tflite (built by tools/build/demo_models.py): sum = a + b, joined = [a, 2b]."""
    from edgeloop.runtime.tensors import dequantize, quantize

    model = engine.load(Path(__file__).parent / "data" / "multi_io.tflite")
    assert len(model.inputs) == 2 and len(model.outputs) == 2
    a = np.array([[0.5, -0.25, 0.75, -0.9]])
    b = np.array([[0.1, 0.2, -0.3, 0.4]])
    real = {"a": a, "b": b}
    arrays = [quantize(real["a" if "_a:" in t.name else "b"], t.quantization, t.dtype) for t in model.inputs]
    outputs = model.run(*arrays)
    got = {o.shape: dequantize(o, spec.quantization) for o, spec in zip(outputs, model.outputs)}
    steps = {spec.shape: spec.quantization.scale for spec in model.outputs}
    assert np.allclose(got[(1, 4)], a + b, atol=3 * steps[(1, 4)])
    assert np.allclose(got[(1, 8)], np.concatenate([a, 2 * b], axis=1), atol=3 * steps[(1, 8)])
    # and bit for bit what a bare interpreter gives for the same two arrays
    module = engine.backend._module
    bare = module.Interpreter(model_path=str(model.artifact.file), num_threads=engine.config.num_threads,
                              experimental_op_resolver_type=module.OpResolverType.AUTO)
    bare.allocate_tensors()
    for detail, array in zip(bare.get_input_details(), arrays):
        bare.set_tensor(detail["index"], array)
    bare.invoke()
    for ours, detail in zip(outputs, bare.get_output_details()):
        assert np.array_equal(ours, bare.get_tensor(detail["index"]))


def test_invoke_releases_the_gil(engine):
    """Another Python thread runs while a thread is inside the backend's native Invoke.

    A profile hook marks entry to and return from the native call in the invoking
    thread; the watching thread can only see "inside" if Invoke let go of the GIL.
    A switch interval longer than one invoke keeps the interpreter from forcing a
    switch in between (checked the other way with a GIL-holding C call: never seen).
    """
    import sys

    model = engine.load("mobilenet_v2")
    x = model.prepare(IMAGES / "cat.bmp")
    inside = threading.Event()
    done = threading.Event()
    seen_inside: list[bool] = []

    def hook(frame, event, arg):
        if getattr(arg, "__name__", "") == "Invoke":
            if event == "c_call":
                inside.set()
            elif event == "c_return":
                inside.clear()

    def invoker() -> None:
        sys.setprofile(hook)
        try:
            for _ in range(20):
                model.run(x)
        finally:
            sys.setprofile(None)
            done.set()

    def watcher() -> None:
        while not done.is_set():
            # wait() sleeps without the GIL; the check after it runs with the GIL held,
            # which it can only hold now if the invoking thread gave it up inside Invoke.
            if inside.wait(0.01) and inside.is_set():
                seen_inside.append(True)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.1)
    try:
        threads = [threading.Thread(target=watcher), threading.Thread(target=invoker)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert seen_inside == [True]


def test_a_failed_input_write_leaves_the_interpreter_usable(engine):
    """Even while the caller keeps the exception, no view into the tensor stays alive."""
    model = engine.load("mobilenet_v1_025")
    interp = model._interpreter()
    errors = []
    for bad in (np.zeros((1, 2), np.uint8), [[1, 2]]):
        try:
            interp.set_input(0, bad)
        except InputError as exc:
            errors.append(exc)
    try:
        interp.fill_input(0, lambda view: view.reshape(7))  # raises inside the writer
    except InputError as exc:
        errors.append(exc)
    assert [type(e) for e in errors] == [InputError] * 3
    assert "got list" in str(errors[1]) and "writing input 0 failed: ValueError" in str(errors[2])
    interp.invoke()  # would raise "at least 1 reference to internal data" if a view survived
    assert model.classify(IMAGES / "parrot.jpg").best.index == 89
