"""The serial link against the simulated MCU on a real pty: handshake and streaming,
commands with retransmission and duplicate detection, unplug and replug, an MCU reset
mid-stream (no command applied twice), and bit errors on the live line."""

from __future__ import annotations

import threading
import time

import pytest

from edgeloop.firmware_bridge.link import CommandTimeout, LinkConfig, McuLink, SerialLinkError, SessionReset
from edgeloop.firmware_bridge.sim_process import SimProcess as Sim


@pytest.fixture
def sim(tmp_path):
    s = Sim(tmp_path, "--rate", "200")
    yield s
    s.close()


@pytest.fixture
def link(sim):
    mcu = McuLink(LinkConfig(str(sim.link), timeout_s=0.1, retries=3)).start()
    assert mcu.wait_ready(5), mcu.stats()
    yield mcu
    mcu.stop()


def next_sensor(link: McuLink, timeout_s: float = 2.0) -> dict:
    return link.sensor.get(timeout=timeout_s)


def test_handshake_streaming_and_commands(sim, link):
    assert link.session["fw"] == "sim-mcu 1.0" and link.session["version"] == 1
    window = next_sensor(link)
    assert window["stream"] == "accel" and len(window["samples"]) == 32
    loud = max(abs(v) for v in window["samples"])
    assert link.command("motor", {"on": False}) == {"ok": True, "motor": False}
    time.sleep(0.05)
    while not link.sensor.empty():
        link.sensor.get_nowait()
    quiet = max(abs(v) for v in next_sensor(link)["samples"])
    assert loud > 500 and quiet < 300, (loud, quiet)  # the MCU obeyed: the motor stopped
    assert len(sim.applied()) == 1 and link.stats()["acks"] == 1


def test_a_command_sent_as_soon_as_the_session_is_ready_is_not_failed_as_stale(sim, monkeypatch):
    """Found in CI (the socket:// test): READY was visible before the old session's commands
    were failed, so a command sent right after wait_ready could be failed as if the MCU had
    reset. The window is widened here by a slow log line where the old code failed them."""
    import edgeloop.firmware_bridge.link as link_module

    real = link_module.log.info
    slowed: list[int] = []

    def slow_info(message, *args):
        if message.startswith("serial: session") and not slowed:  # the first session only: a
            slowed.append(1)  # later one, slowed, would log after the test's capture has closed
            time.sleep(0.3)
        real(message, *args)

    monkeypatch.setattr(link_module.log, "info", slow_info)
    mcu = McuLink(LinkConfig(str(sim.link), timeout_s=1.0, retries=1)).start()
    try:
        assert mcu.wait_ready(5), mcu.stats()
        assert mcu.command("motor", {"on": False})["motor"] is False
    finally:
        mcu.stop()


def test_a_lost_ack_is_retransmitted_and_the_mcu_applies_the_command_once(sim, link):
    sim.tell("drop-acks 2")
    time.sleep(0.1)
    ack = link.command("motor", {"on": False}, command_id="stop-1")
    assert ack["ok"] and link.stats()["retransmits"] == 2
    sim.wait_for_line("duplicate")
    assert [cid for _, _, cid in sim.applied()].count("stop-1") == 1
    assert sum(line.startswith("duplicate") for line in sim.lines) == 2


def test_a_silent_mcu_times_out_with_a_typed_error_and_the_link_recovers(sim, link):
    sim.tell("silent 1.0")
    time.sleep(0.05)
    with pytest.raises(CommandTimeout, match="not acknowledged after 4 attempts"):
        link.command("ping")
    time.sleep(1.0)
    assert link.command("ping")["ok"]


def test_unplug_and_replug_reconnects_and_streams_within_2_s(sim, link):
    sim.tell("unplug")
    time.sleep(0.5)
    with pytest.raises(SerialLinkError):
        link.command("ping", timeout_s=0.05, retries=0)
    while not link.sensor.empty():
        link.sensor.get_nowait()
    replugged = time.monotonic()
    sim.tell("replug")
    window = next_sensor(link, timeout_s=2.0)
    assert window["rx"] - replugged < 2.0
    # Windows may arrive a moment before the new session's HELLO is answered (seen in CI):
    # commands wait for the session, which must come within the same 2 s.
    assert link.wait_ready(2.0) and time.monotonic() - replugged < 2.0
    assert link.stats()["reopens"] >= 1 and link.command("ping")["ok"]
    print(f"\nstreaming again {window['rx'] - replugged:.3f} s after the replug")


def test_an_mcu_reset_mid_stream_never_applies_a_command_twice(sim, link):
    outcomes: dict[str, str] = {}
    stop = threading.Event()

    def commander() -> None:
        n = 0
        while not stop.is_set():
            cid = f"k{n}"
            n += 1
            try:
                link.command("motor", {"on": n % 2 == 0}, command_id=cid)
                outcomes[cid] = "acked"
            except SessionReset:
                outcomes[cid] = "reset"
            except (CommandTimeout, SerialLinkError):
                outcomes[cid] = "failed"
                time.sleep(0.01)

    t = threading.Thread(target=commander)
    t.start()
    boots = set()
    for _ in range(5):
        time.sleep(0.2)
        sim.tell("drop-acks 1")  # an ack in flight when the reset comes
        sim.tell("reset")
        time.sleep(0.2)
        boots.add(link.session["boot"])
    stop.set()
    t.join()
    acked = {cid for cid, how in outcomes.items() if how == "acked"}
    deadline = time.monotonic() + 3  # the simulator's last report lines may still be in the pipe
    while not acked <= {cid for _, _, cid in sim.applied()} and time.monotonic() < deadline:
        time.sleep(0.02)
    applied = [cid for _, _, cid in sim.applied()]
    assert len(applied) == len(set(applied)), "a command was applied twice"
    assert acked <= set(applied)  # an acknowledged command was applied (once)
    assert link.stats()["sessions"] >= 5 and len(boots) >= 4
    print(f"\n{len(applied)} applied, outcomes {sorted(set(outcomes.values()))}, stale refusals {link.stats()['stale']}, "
          f"resets seen by waiting commands {list(outcomes.values()).count('reset')}")
    assert next_sensor(link)["stream"] == "accel"  # still streaming


def test_bit_errors_on_the_pty_never_deliver_a_corrupt_window(tmp_path):
    """The simulator sends FRAMES windows as fast as it can through the pty with every bit
    flipped with probability 1e-3 (10^6 in ``make soak``); each window carries an end-to-end
    check of its own, so a corrupt window that got past the frame CRC would be counted."""
    import os

    from edgeloop.firmware_bridge.sim_mcu import window_check

    frames = int(os.environ.get("EDGELOOP_SERIAL_FRAMES", "100000"))
    sim = Sim(tmp_path, "--rate", "0", "--window", "10", "--ber", "0.001", "--verify")
    link = McuLink(LinkConfig(str(sim.link), queue_size=frames + 10_000)).start()
    try:
        assert link.wait_ready(10)
        start = next_sensor(link, 5.0)["n"]
        intact = corrupt = last = 0
        deadline = time.monotonic() + 60 + frames / 5000
        while last < start + frames and time.monotonic() < deadline:
            w = link.sensor.get(timeout=5.0)
            if w.get("check") != window_check(w) or len(w["samples"]) != 10:
                corrupt += 1
            else:
                intact += 1
            last = max(last, w["n"])
        sent = last - start
        stats = link.stats()
        print(f"\n{sent} windows sent through the pty at BER 1e-3: {intact} intact, {corrupt} corrupt delivered, "
              f"rejected {stats['rejected']}")
        assert sent >= frames and corrupt == 0
        assert 0.3 * sent < intact < 0.9 * sent  # the errors really hit, and the reader kept up
    finally:
        link.stop()
        sim.close()


def test_closed_loop_an_anomaly_stops_the_motor_and_the_event_is_stored(sim, link, tmp_path):
    from edgeloop.firmware_bridge.closed_loop import ClosedLoop
    from edgeloop.sync.outbox import Outbox

    def decide(window: dict):
        spike = max(abs(v) for v in window["samples"]) > 8000  # a bearing knock
        return ("motor", {"on": False}) if spike else None

    with Outbox(tmp_path / "outbox.db", "gw-1") as box:
        loop = ClosedLoop(link, decide, outbox=box)
        quiet = loop.run(0.3)
        assert quiet["commands"] == 0 and quiet["windows"] > 20
        sim.tell("anomaly on")
        figures = loop.run(1.2)
        assert figures["commands"] >= 1 and figures["loop_p99_ms"] < 50, figures
        assert any(cid.startswith("c") for _, _, cid in sim.applied())
        streams = box.stats()["streams"]
        assert streams["events"]["rows"] == figures["commands"] and streams["telemetry"]["rows"] >= 1


def test_bench_serial_reports_its_keys():
    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.engine import Engine, EngineConfig
    from edgeloop.tools.bench.serial import bench_serial

    with Engine(EngineConfig(num_threads=1), ModelStore()) as engine:
        r = bench_serial(0.5, engine)
    for key in ("frames_per_s", "payload_bytes", "rtt_p50_ms", "rtt_p99_ms", "loop_p50_ms", "loop_p99_ms"):
        assert isinstance(r[key], float) and r[key] > 0, key
    assert 50 <= r["payload_bytes"] <= 80 and r["loop_windows"] > 10


def test_a_pyserial_url_serial_over_tcp(sim):
    """``socket://`` through a small TCP relay to the pty (what ser2net does on a rig)."""
    import socket

    import serial

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    pty = serial.Serial(str(sim.link), timeout=0.05)

    def relay() -> None:
        conn, _ = server.accept()
        conn.settimeout(0.05)

        def up() -> None:
            while True:
                try:
                    data = conn.recv(4096)
                except socket.timeout:
                    continue
                except OSError:
                    return
                if not data:
                    return
                pty.write(data)

        threading.Thread(target=up, daemon=True).start()
        while True:
            data = pty.read(4096)
            if data:
                try:
                    conn.sendall(data)
                except OSError:
                    return

    threading.Thread(target=relay, daemon=True).start()
    link = McuLink(LinkConfig(f"socket://127.0.0.1:{server.getsockname()[1]}")).start()
    try:
        assert link.wait_ready(5), link.stats()
        assert link.command("motor", {"on": False})["motor"] is False
        assert next_sensor(link)["stream"] == "accel"
    finally:
        link.stop()
        server.close()
