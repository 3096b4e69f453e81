"""The ``edgeloop`` command line.

Heavy modules (the backend, Pillow) are imported by the sub-command that needs
them, so ``edgeloop --help`` and cold starts stay fast on small devices.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable, Sequence

from edgeloop.runtime.errors import ConfigError, EdgeloopError

EXIT_ERROR = 2


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


def _common(parser: argparse.ArgumentParser) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    from . import bench, doctor, index_cmd, infer, models_cmd, outbox_cmd, regional_cmd, run_cmd, status_cmd

    parser = argparse.ArgumentParser(prog="edgeloop", description="On-device inference runtime.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-json", action="store_true",
                        help="structured logs: one JSON object a line on stderr [EDGELOOP_LOG_FORMAT=json]")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run_cmd, status_cmd, doctor, infer, bench, models_cmd, outbox_cmd, regional_cmd, index_cmd):
        module.register(sub, _common)
    return parser


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"ts": round(record.created, 6), "level": record.levelname.lower(), "logger": record.name,
                 "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="edgeloop: %(levelname)s %(message)s", stream=sys.stderr)
    if args.log_json or os.environ.get("EDGELOOP_LOG_FORMAT") == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except EdgeloopError as exc:
        print(f"edgeloop: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
