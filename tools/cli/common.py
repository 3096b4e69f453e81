"""What every sub-command shares: the engine flags and the engine built from them, JSON output,
the exit codes."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from edgeloop.runtime.errors import ConfigError

EXIT_ERROR = 2  # a usage or configuration error (what argparse uses too)


def _delegate_options(pairs: Sequence[str]) -> dict[str, str]:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--delegate-option: '{pair}' is not KEY=VALUE", "write it as --delegate-option key=value")
        options[key] = value
    return options


def engine_from_args(args: argparse.Namespace) -> Any:
    """An Engine configured from defaults, ``EDGELOOP_*`` variables and these flags."""
    from edgeloop.models.store import ModelStore
    from edgeloop.runtime.delegates import DelegateSpec
    from edgeloop.runtime.engine import Engine, EngineConfig

    delegate = None
    if args.delegate and args.delegate != "cpu":
        delegate = DelegateSpec(args.delegate, device=args.edgetpu_device, library=args.delegate_library,
                                options=_delegate_options(args.delegate_option))
    config = EngineConfig.from_env(backend=args.backend, num_threads=args.threads,
                                   xnnpack=False if args.no_xnnpack else None, delegate=delegate,
                                   allow_unverified=args.allow_unverified or None)
    return Engine(config, ModelStore.from_env(extra=args.manifest))


def engine_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument("--backend", help="auto (default), litert or tflite_runtime [EDGELOOP_BACKEND]")
    g.add_argument("--threads", type=int, help="interpreter threads (default: cores, at most 4) [EDGELOOP_NUM_THREADS]")
    g.add_argument("--no-xnnpack", action="store_true", help="disable the XNNPACK CPU delegate [EDGELOOP_XNNPACK=0]")
    g.add_argument("--delegate", choices=("cpu", "edgetpu", "gpu", "external"),
                   help="accelerator to use; falls back to the CPU variant, loudly [EDGELOOP_DELEGATE]")
    g.add_argument("--edgetpu-device", help="usb, usb:N, pci, pci:N or :N [EDGELOOP_EDGETPU_DEVICE]")
    g.add_argument("--delegate-library", help="library of an external delegate [EDGELOOP_DELEGATE_LIBRARY]")
    g.add_argument("--delegate-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option for the delegate (repeatable)")
    g.add_argument("--manifest", action="append", default=[],
                   help="extra model manifest (repeatable) [EDGELOOP_MANIFEST, a path list]")
    g.add_argument("--allow-unverified", action="store_true",
                   help="run a registered model whose sha256 does not match, after the isolated check")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def broker_flags(parser: argparse.ArgumentParser, required: bool = False) -> None:
    """--broker and the TLS/credential flags every MQTT command takes, with the agent's defaults."""
    from edgeloop.sync.topics import DEFAULT_FLEET

    g = parser.add_argument_group("broker")
    g.add_argument("--broker", required=required, help="HOST[:PORT] (1883 when no port is given), or several, "
                   "comma-separated: the nodes of a broker cluster, tried in turn")
    g.add_argument("--fleet", default=DEFAULT_FLEET, help=f"the fleet's topic level (default {DEFAULT_FLEET}, "
                   "as the agent's)")
    g.add_argument("--ca-file", help="TLS: the CA the broker's certificate must chain to")
    g.add_argument("--cert-file", help="mutual TLS: this client's certificate (with --key-file)")
    g.add_argument("--key-file", help="mutual TLS: this client's private key")
    g.add_argument("--username", help="MQTT username")
    g.add_argument("--password-file", help="a file holding the MQTT password (never a flag: ps shows flags)")


def broker_from_args(args: argparse.Namespace) -> Any:
    """The BrokerConfig of --broker and the TLS/credential flags; the fleet name checked."""
    from pathlib import Path

    from edgeloop.sync.mqtt_client import BrokerConfig, parse_broker
    from edgeloop.sync.topics import check_name

    check_name("--fleet", args.fleet)
    host, port, fallbacks = parse_broker(args.broker)
    password = None
    if args.password_file:
        from edgeloop.sync.private_file import check_private_file

        check_private_file(Path(args.password_file), "--password-file")
        try:
            password = Path(args.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--password-file: cannot read {args.password_file} ({exc})",
                              "give a readable file holding the password") from exc
    return BrokerConfig(host, port, username=args.username, password=password, ca_file=args.ca_file,
                        cert_file=args.cert_file, key_file=args.key_file, fallbacks=fallbacks)
