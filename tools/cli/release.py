"""``edgeloop release``: build and sign the TUF repository of model bundles (a folder any
static HTTP server can serve)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("release", help="signed model bundles: a TUF repository for the fleet")
    rsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    def repo_flags(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--repo", type=Path, required=True, help="the repository folder (served as it is)")
        sp.add_argument("--keys", type=Path, required=True, help="the signing keys' folder (mode 700; root offline)")

    sp = rsub.add_parser("init", help="a new repository and fresh ed25519 keys, one delegated role per group")
    repo_flags(sp)
    sp.add_argument("--group", action="append", default=[], help="a fleet group (repeat)")
    sp.set_defaults(handler=cmd_init)

    sp = rsub.add_parser("group", help="add a fleet group (a role and key of its own)")
    repo_flags(sp)
    sp.add_argument("--group", required=True)
    sp.set_defaults(handler=cmd_group)

    sp = rsub.add_parser("add", help="bundle a model (its manifest entry, files, golden set) and sign it for a group")
    repo_flags(sp)
    sp.add_argument("--group", required=True)
    sp.add_argument("--manifest", type=Path, required=True, help="the manifest registering the model")
    sp.add_argument("--model", required=True)
    sp.add_argument("--min-top1", type=float, default=1.0, help="golden inputs whose top-1 must be right (share)")
    sp.add_argument("--max-abs", type=float, default=0.05, help="largest score difference from this machine's")
    sp.add_argument("--probation-s", type=float, default=30.0, help="the SLO window after the golden set")
    sp.add_argument("--min-requests", type=int, default=20)
    sp.add_argument("--p95-ms", type=float, default=None)
    sp.add_argument("--max-error-rate", type=float, default=0.01)
    sp.add_argument("--max-stepdowns", type=int, default=0)
    sp.add_argument("--require-delegate", action="store_true")
    sp.add_argument("--min-agreement", type=float, default=0.0, help="with the old model in shadow (0: not checked)")
    sp.add_argument("--no-golden-check", action="store_true",
                    help="sign it even if it fails its golden set here (to test the devices' probation)")
    sp.set_defaults(handler=cmd_add)

    sp = rsub.add_parser("remove", help="take a version's bundle out of a group's signed targets")
    repo_flags(sp)
    sp.add_argument("--group", required=True)
    sp.add_argument("--model", required=True)
    sp.add_argument("--version", required=True)
    sp.set_defaults(handler=cmd_remove)

    sp = rsub.add_parser("timestamp", help="sign a fresh timestamp (run it on a schedule: it expires in a day)")
    repo_flags(sp)
    sp.add_argument("--days", type=_positive, default=1.0, help="how long it is valid (default 1)")
    sp.set_defaults(handler=cmd_timestamp)

    sp = rsub.add_parser("list", help="the groups and their signed bundles")
    repo_flags(sp)
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(handler=cmd_list)


def _positive(text: str) -> float:
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0 or value > 3650:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days within 0..3650")
    return value


def _repo(args: argparse.Namespace) -> Any:
    from edgeloop.tools.release.repository import ReleaseRepository

    return ReleaseRepository(args.repo, args.keys)


def cmd_init(args: argparse.Namespace) -> int:
    _repo(args).init(args.group)
    print(f"release: repository in {args.repo} for group(s) {', '.join(args.group) or 'none'}; ship "
          f"{args.repo / 'metadata' / 'root.json'} in the device image; keep {args.keys / 'root.pem'} offline")
    return 0


def cmd_group(args: argparse.Namespace) -> int:
    _repo(args).add_group(args.group)
    print(f"release: group {args.group} added")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from edgeloop.sync.bundle import ProbationSpec
    from edgeloop.tools.release.bundle import make_bundle

    repo = _repo(args)
    probation = ProbationSpec(args.probation_s, args.min_requests, args.p95_ms, args.max_error_rate,
                              args.max_stepdowns, args.require_delegate, args.min_agreement)
    with tempfile.TemporaryDirectory(prefix="edgeloop-bundle-") as tmp:
        folder = Path(tmp)
        spec = make_bundle(args.manifest, args.model, folder, probation, args.min_top1, args.max_abs,
                           check=not args.no_golden_check)
        repo.add_bundle(args.group, spec, folder)
        snapshot = repo.publish()
    print(f"release: {spec.model} {spec.version} signed for group {args.group} ({len(spec.files) + 1} files; "
          f"snapshot {snapshot})")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    repo = _repo(args)
    n = repo.remove_prefix(args.group, f"{args.model}/{args.version}")
    if n:
        repo.publish()
    print(f"release: {n} file(s) of {args.model} {args.version} taken out of group {args.group}")
    return 0 if n else 1


def cmd_timestamp(args: argparse.Namespace) -> int:
    _repo(args).timestamp(args.days)
    print(f"release: timestamp signed for {args.days:g} day(s)")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    repo = _repo(args)
    out: dict[str, dict[str, list[str]]] = {}
    for group in repo.groups():
        bundles: dict[str, list[str]] = {}
        for path in repo.targets(group):
            _, model, version, _ = path.split("/", 3)
            versions = bundles.setdefault(model, [])
            if version not in versions:
                versions.append(version)
        out[group] = bundles
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for group, bundles in out.items():
            print(f"{group}: " + ("; ".join(f"{m} {', '.join(v)}" for m, v in bundles.items()) or "no bundles"))
    return 0
