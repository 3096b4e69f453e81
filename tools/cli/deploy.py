"""``edgeloop deploy systemd``: the systemd unit (``tools/deploy/edgeloop.service``) with
``ExecStart`` pointing at this edgeloop (the venv it runs from) and the config and data folder
given, on stdout."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

UNIT = Path(__file__).resolve().parent.parent / "deploy" / "edgeloop.service"


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("deploy", help="deployment files: the systemd unit for this installation")
    dsub = p.add_subparsers(dest="deploy_command", required=True, metavar="WHAT")
    s = dsub.add_parser("systemd", help="print the systemd unit, ExecStart at this edgeloop")
    s.add_argument("--config", default="/etc/edgeloop/edgeloop.toml", help="the agent's config file")
    s.add_argument("--data-dir", default="/var/lib/edgeloop", help="the data folder (a StateDirectory under /var/lib)")
    s.set_defaults(handler=cmd_systemd)


def executable() -> Path:
    """This installation's ``edgeloop``: beside the interpreter (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / "edgeloop"
    if beside.is_file():
        return beside.absolute()
    found = shutil.which("edgeloop")
    return Path(found).absolute() if found else beside.absolute()


def render(config: str, data_dir: str) -> str:
    from edgeloop.runtime.errors import ConfigError

    data = Path(data_dir)
    if not data.is_absolute() or data.parent != Path("/var/lib"):
        raise ConfigError(f"--data-dir: {data_dir} is not a folder in /var/lib",
                          "give /var/lib/NAME: systemd makes it (StateDirectory) for the unit's own user")
    text = UNIT.read_text()
    text = text.replace("ExecStart=/opt/edgeloop/bin/edgeloop run --config /etc/edgeloop/edgeloop.toml",
                        f"ExecStart={executable()} run --config {config}")
    text = text.replace("Environment=EDGELOOP_DATA_DIR=/var/lib/edgeloop", f"Environment=EDGELOOP_DATA_DIR={data}")
    return text.replace("StateDirectory=edgeloop", f"StateDirectory={data.name}")


def cmd_systemd(args: argparse.Namespace) -> int:
    sys.stdout.write(render(args.config, args.data_dir))
    return 0
