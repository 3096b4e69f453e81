"""The systemd unit as systemd's own tool reads it: ``edgeloop deploy systemd`` points ExecStart
at this installation's edgeloop, the unit verifies, and its hardening keeps the exposure that
``systemd-analyze security`` reports at 4.0 or less (the notify protocol itself is tested against
a real socket in test_agent_field.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from conftest import REPO
from test_cli import EDGELOOP


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.fail("systemd-analyze is missing (Debian's systemd package; `make test` installs it)", pytrace=False)
    return exe


def test_the_generated_unit_runs_this_edgeloop_and_verifies(tmp_path):
    out = subprocess.run([EDGELOOP, "deploy", "systemd", "--config", "/etc/edgeloop/cam.toml", "--data-dir",
                          "/var/lib/edgeloop-cam"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    unit = tmp_path / "edgeloop.service"
    unit.write_text(out.stdout)
    exec_start = re.search(r"^ExecStart=(\S+) run --config /etc/edgeloop/cam.toml$", out.stdout, re.M)
    assert exec_start and os.access(exec_start.group(1), os.X_OK), out.stdout
    assert os.path.samefile(exec_start.group(1), EDGELOOP)
    assert "StateDirectory=edgeloop-cam" in out.stdout and "EDGELOOP_DATA_DIR=/var/lib/edgeloop-cam" in out.stdout
    verify = subprocess.run([analyze(), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and "edgeloop" not in verify.stderr, verify.stderr
    bad = subprocess.run([EDGELOOP, "deploy", "systemd", "--data-dir", "/home/x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a folder in /var/lib" in bad.stderr


@pytest.mark.parametrize("which", ["shipped", "generated"])
def test_the_units_hardening_keeps_exposure_at_most_4(tmp_path, which):
    unit = tmp_path / "edgeloop.service"
    if which == "shipped":
        shutil.copy(REPO / "tools" / "deploy" / "edgeloop.service", unit)
    else:
        unit.write_text(subprocess.run([EDGELOOP, "deploy", "systemd"], capture_output=True, text=True,
                                       check=True).stdout)
    out = subprocess.run([analyze(), "security", "--offline=true", str(unit)], capture_output=True, text=True,
                         timeout=60)
    level = re.search(r"Overall exposure level for edgeloop.service: ([0-9.]+)", out.stdout)
    assert level, out.stdout[-2000:] + out.stderr
    assert float(level.group(1)) <= 4.0
    text = unit.read_text()
    for must in ("Type=notify", "WatchdogSec=", "DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict"):
        assert must in text
