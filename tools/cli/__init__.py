"""The ``edgeloop`` command line.

Heavy modules (the backend, Pillow) are imported by the sub-command that needs
them, so ``edgeloop --help`` and cold starts stay fast on small devices.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from edgeloop.runtime import logs
from edgeloop.runtime.errors import EdgeloopError

from .common import EXIT_ERROR, engine_flags


class _Version(argparse.Action):
    """--version, looked up only when asked (importlib.metadata costs a start-up ~30 ms)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from .status import package_version

        print(f"edgeloop {package_version()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    from . import bench, deploy, doctor, fleet, index, infer, models, outbox, pki, regional, release, run, status

    parser = argparse.ArgumentParser(prog="edgeloop", description="On-device inference runtime.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_Version, nargs=0, help="show the version and exit")
    parser.add_argument("--log-json", action="store_true",
                        help="structured logs: one JSON object a line on stderr [EDGELOOP_LOG_FORMAT=json]")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (run, status, doctor, infer, bench, models, outbox, regional, release, fleet, pki, index, deploy):
        module.register(sub, engine_flags)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .bench import shorthand

    parser = build_parser()
    args = parser.parse_args(shorthand(list(sys.argv[1:] if argv is None else argv)))
    logs.configure(json=True if args.log_json else None, verbose=args.verbose)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except EdgeloopError as exc:
        print(f"edgeloop: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        return 0

