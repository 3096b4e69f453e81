"""A NATS cluster of our own on loopback, for the tests and the benchmarks: Debian's
``nats-server``, N nodes routed to each other, JetStream on (the MQTT gateway keeps its
sessions and QoS 1 messages in JetStream streams, replicated across the nodes) and each node's
MQTT listener (3.1.1 only) on an ephemeral port. A node can be SIGKILLed and restarted with its
store."""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path



_HANDED_OUT: set[int] = set()


def fixed_port() -> int:
    """A free port below Linux's ephemeral range: a node's address must stay its own across a
    restart, and a port from the ephemeral range can be taken meanwhile by any outgoing
    connection (the other nodes' own route connections among them)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:  # free now, but another node's already
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                _HANDED_OUT.add(port)
                return port
            except OSError:
                continue
    raise RuntimeError("no free port below the ephemeral range")


class NatsNode:
    def __init__(self, name: str, workdir: Path, cluster_port: int, routes: list[int],
                 authorization: str = "") -> None:
        self.name = name
        self.client_port = fixed_port()
        self.cluster_port = cluster_port
        self.mqtt_port = fixed_port()
        self.log = workdir / f"{name}.log"
        self.conf = workdir / f"{name}.conf"
        route_list = ", ".join(f"nats://127.0.0.1:{p}" for p in routes if p != self.cluster_port)
        self.workdir = workdir
        self.cluster = (f"cluster {{ name: edgeloop, listen: 127.0.0.1:{self.cluster_port}, routes: [{route_list}] }}\n"
                        if len(routes) > 1 else "")
        self.write_conf(authorization)
        self.proc: subprocess.Popen | None = None

    def write_conf(self, authorization: str = "") -> None:
        """The node's configuration; ``authorization``: the body of an ``authorization`` block,
        in which MQTT clients that give no credentials are user ``anonymous``. ``reload()``
        makes a running node read it again."""
        mqtt_extra = " no_auth_user: anonymous," if authorization else ""
        self.conf.write_text(
            f"server_name: {self.name}\nlisten: 127.0.0.1:{self.client_port}\n"
            f'jetstream {{ store_dir: "{self.workdir / self.name}" }}\n'
            + self.cluster +
            # ack_wait: how long a QoS 1 message waits for its PUBACK before it is sent again
            # (the receiver PUBACKs only after its commit). stream_replicas: 3 always; left to
            # itself the gateway takes the nodes it sees when it first makes its streams, and a
            # 2-replica session stream stalls for good when one of them dies (seen).
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port},{mqtt_extra} ack_wait: \"30s\", max_ack_pending: 1024, "
            f"stream_replicas: {3 if self.cluster else 1} }}\n"
            + (f"authorization {{ {authorization} }}\n" if authorization else ""))

    def reload(self) -> None:
        """SIGHUP: nats-server reloads its configuration (its authorization among it)."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self, exe: str) -> "NatsNode":
        self.log_from = self.log.stat().st_size if self.log.exists() else 0  # this run's lines only
        self.proc = subprocess.Popen([exe, "-c", str(self.conf), "-l", str(self.log)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        return self

    def listening(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.mqtt_port), timeout=0.2).close()
            return True
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class NatsCluster:
    """``NatsCluster(workdir, 3).start()``; ``mqtt_ports``; ``nodes[i].kill()``, ``restart(i)``; ``stop()``.
    A size of 1 is one standalone server; ``authorization``: see ``NatsNode.write_conf``."""

    def __init__(self, workdir: Path, size: int = 3, authorization: str = "") -> None:
        exe = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(exe).exists():
            raise RuntimeError("nats-server is not installed "
                               "(Debian: apt-get install nats-server; `make test` does it)")
        self.exe = exe
        self.workdir, self.size, self.authorization = workdir, size, authorization
        self._make_nodes()

    def _make_nodes(self) -> None:
        """Fresh ports and an empty store for every node."""
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        routes = [fixed_port() for _ in range(self.size)]
        self.nodes = [NatsNode(f"n{i + 1}", self.workdir, port, routes, self.authorization)
                      for i, port in enumerate(routes)]

    @property
    def mqtt_ports(self) -> list[int]:
        return [n.mqtt_port for n in self.nodes]

    def start(self, timeout_s: float = 30, attempts: int = 3) -> "NatsCluster":
        """Starts every node and waits for the cluster. A cluster that never elects its
        JetStream metadata leader (seen once in CI: routes up, no leader within 30 s, not
        reproduced in 55 tries here) is started again from scratch on fresh ports, saying so
        on stderr; the last failure is raised."""
        for attempt in range(1, attempts + 1):
            for node in self.nodes:
                node.start(self.exe)
            try:
                self._wait(self.nodes, timeout_s)
                return self
            except RuntimeError as e:
                self.stop()  # no node left behind by a cluster that never came up
                if attempt == attempts:
                    raise
                print(f"nats cluster: attempt {attempt} of {attempts} did not come up, starting afresh: {e}",
                      file=sys.stderr)
                self._make_nodes()
        raise AssertionError("unreachable")

    def restart(self, i: int, timeout_s: float = 30) -> None:
        self.nodes[i].start(self.exe)
        self._wait([self.nodes[i]], timeout_s)

    def _wait(self, nodes: list[NatsNode], timeout_s: float) -> None:
        """Until each node listens for MQTT and the cluster has a JetStream leader (before that
        the MQTT gateway cannot create a session)."""
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            # A standalone server is its own JetStream leader once it is ready.
            ready = "metadata leader" if node.cluster else "Server is ready"
            while not (node.listening() and ready in self._read(node)):
                if node.proc.poll() is not None:
                    raise RuntimeError(f"nats-server {node.name} exited with {node.proc.returncode}: "
                                       f"{self._read(node)[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"nats-server {node.name} not ready within {timeout_s:.0f} s: "
                                       f"{self._read(node)[-2000:]}")
                time.sleep(0.1)

    @staticmethod
    def _read(node: NatsNode) -> str:
        try:
            with node.log.open("rb") as f:
                f.seek(node.log_from)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()
