"""Offload to the regional edge over MQTT 5 request/response, against a real Mosquitto: a
responder runs mobilenet_v2; the device's ladder sends requests there when its own rung
fails or its queue is full, and answers locally when the link is down."""

from __future__ import annotations

import threading
import time

import pytest
from PIL import Image

from conftest import IMAGES
from edgeloop.runtime.watchdog import DefaultRung, Ladder, LadderConfig, ModelRung
from edgeloop.tools.testing.faults import FaultyModel
from edgeloop.runtime.watchdog.rungs import RungFailed, RungTimeout
from edgeloop.sync.mqtt_client import BrokerConfig
from edgeloop.sync.offload import OffloadRung, Offloader, Responder

CATS = {282, 283, 286}


@pytest.fixture
def responder(broker, engine):
    model = engine.load("mobilenet_v2")
    r = Responder(BrokerConfig("127.0.0.1", broker.port), "f1", {"classify": lambda image: model.classify(image).to_dict()}).start()
    assert r.connected.wait(10)
    time.sleep(0.2)  # the SUBACK
    yield r
    r.stop()


@pytest.fixture
def offloader(broker):
    o = Offloader(BrokerConfig("127.0.0.1", broker.port), "f1", "cam-9")
    assert o.online.wait(10)
    time.sleep(0.2)
    yield o
    o.close()


@pytest.fixture
def cat():
    return Image.open(IMAGES / "cat.bmp").convert("RGB")


def test_request_response_answers_with_the_regional_model(responder, offloader, cat):
    answer = offloader.request("classify", cat, 2.0)
    assert answer["top"][0]["index"] in CATS and responder.answered == 1
    with pytest.raises(RungFailed, match="no model for task 'detect' here"):
        offloader.request("detect", cat, 2.0)
    with pytest.raises(RungTimeout, match="did not answer within"):
        offloader.request("classify", cat, 0.0005)


def test_the_ladder_offloads_when_its_model_fails_and_answers_locally_when_the_link_is_down(
        responder, offloader, engine, cat, broker):
    local = FaultyModel(engine.load("mobilenet_v1_025"))
    top = FaultyModel(engine.load("mobilenet_v2"))
    ladder = Ladder("classify", [ModelRung("cpu", top, hang_s=0.2), OffloadRung(offloader, "classify"),
                                 ModelRung("small", local, degraded=True), DefaultRung("unknown")],
                    LadderConfig(deadline_s=0.5, recover_s=60))
    try:
        top.fail()
        served = ladder.serve(cat)
        assert served.rung == "offload" and served.result["top"][0]["index"] in CATS
        broker.stop()  # the link goes down
        deadline = time.monotonic() + 10
        while offloader.online.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not offloader.online.is_set()
        start = time.monotonic()
        down = ladder.serve(cat)
        assert down.rung == "small" and time.monotonic() - start < 0.5
    finally:
        top.heal()
        ladder.close()


def test_beyond_capacity_requests_spill_to_the_regional_edge_instead_of_being_shed(responder, offloader,
                                                                                      engine, cat):
    slow = FaultyModel(engine.load("mobilenet_v2"))
    slow.slow(0.2)
    ladder = Ladder("classify", [ModelRung("cpu", slow, hang_s=5), DefaultRung("unknown")],
                    LadderConfig(deadline_s=1.0, capacity=1), overflow=OffloadRung(offloader, "classify"))
    results = []
    try:
        threads = [threading.Thread(target=lambda: results.append(ladder.serve(cat))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rungs = sorted(r.rung for r in results)
        assert "offload" in rungs and "cpu" in rungs, rungs
        assert all(r.result["top"][0]["index"] in CATS for r in results if r.rung == "offload")
    finally:
        slow.heal()
        ladder.close()


def test_the_regional_command_answers_offloaded_requests(broker, offloader, coral_manifest, tmp_path, cat):
    import signal
    import subprocess

    from test_cli import EDGELOOP

    proc = subprocess.Popen([EDGELOOP, "regional", "run", "--db", str(tmp_path / "regional.db"), "--broker",
                             f"127.0.0.1:{broker.port}", "--fleet", "f1", "--respond", "classify=mobilenet_v2",
                             "--manifest", str(coral_manifest)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 30
        answer = None
        while answer is None and time.monotonic() < deadline:
            try:
                answer = offloader.request("classify", cat, 1.0)
            except (RungTimeout, RungFailed):
                time.sleep(0.2)  # still starting
        assert answer is not None and answer["top"][0]["index"] in CATS
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "answering classify requests" in out


def test_a_domain_whose_model_is_not_on_the_device_is_routed_to_the_regional_edge(responder, offloader, cat, broker):
    from edgeloop.runtime.router import Request, Route, Router

    regional = Ladder("marine", [OffloadRung(offloader, "classify"), DefaultRung("unknown")],
                      LadderConfig(deadline_s=1.0, recover_s=60))
    local = Ladder("general", [DefaultRung("local")])
    router = Router({"local": local, "regional": regional},
                    {"classify": Route("local", domains={"marine": "regional"})})
    try:
        slot, served = router.serve(Request("classify", cat, key="cam-9", domain="marine"))
        assert slot == "regional" and served.rung == "offload" and served.result["top"][0]["index"] in CATS
        assert router.serve(Request("classify", cat, key="cam-9"))[1].result == "local"
        broker.stop()
        deadline = time.monotonic() + 10
        while offloader.online.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        slot, served = router.serve(Request("classify", cat, key="cam-9", domain="marine"))
        assert slot == "regional" and served.rung == "default" and served.degraded  # the link is down
    finally:
        regional.close()
        local.close()
