"""``edgeloop index add|query|stats|export|import|rebuild``: the on-device retrieval index by hand.

Images are embedded with ``--model`` (any registered model or .tflite path whose output 0 is
an embedding); ``.npy`` files are taken as vectors as they are.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("index", help="the on-device retrieval index: add, query, stats, export, import, rebuild")
    isub = p.add_subparsers(dest="index_command", required=True, metavar="ACTION")

    def action(name: str, help_: str, handler: Any, collection: bool = True, model: bool = False) -> argparse.ArgumentParser:
        a = isub.add_parser(name, help=help_)
        a.add_argument("--db", type=Path, required=True, help="the index file")
        if collection:
            a.add_argument("collection", help="collection name")
        if model:
            a.add_argument("--model", help="embedding model for images (registered name or .tflite path)")
            common(a)
        a.add_argument("--json", action="store_true")
        a.set_defaults(handler=handler)
        return a

    a = action("add", "embed inputs and store them with a label", cmd_add, model=True)
    a.add_argument("inputs", nargs="+", help="images, or .npy vectors")
    a.add_argument("--label", help="label of every input")
    a.add_argument("--storage", choices=("float", "int8", "binary"), default="float",
                   help="for a new collection (default float)")
    a.add_argument("--cells", type=int, default=0, help="for a new collection: k-means cells (default 0: none)")
    q = action("query", "the nearest stored items of an input", cmd_query, model=True)
    q.add_argument("input", help="an image, or a .npy vector")
    q.add_argument("-k", type=int, default=5, help="neighbours (default 5)")
    q.add_argument("--where", action="append", default=[], metavar="COLUMN=VALUE", help="filter (repeatable)")
    q.add_argument("--classify", action="store_true", help="decide a label by the neighbours, or 'unknown'")
    q.add_argument("--threshold", type=float, help="with --classify: the farthest a neighbour may be")
    action("stats", "collections, sizes, labels, models", cmd_stats, collection=False)
    e = action("export", "write a delta: ids, vectors, labels, chosen metadata (never sources)", cmd_export)
    e.add_argument("--out", type=Path, required=True, help="the delta file to write")
    e.add_argument("--since", type=int, default=0, help="only changes after this collection version")
    e.add_argument("--metadata", default="", help="comma-separated metadata columns to include")
    i = action("import", "apply a delta atomically", cmd_import, collection=False)
    i.add_argument("delta", type=Path, help="a delta written by 'edgeloop index export'")
    i.add_argument("--storage", choices=("float", "int8", "binary"), default="float",
                   help="when the delta's collection is new here (default float)")
    action("rebuild", "re-embed a collection from its stored sources with --model", cmd_rebuild, model=True)


def _embedder(args: argparse.Namespace) -> tuple[Any, Any, tuple[str, str] | None]:
    """(engine or None, embed function, model identity or None)."""
    import numpy as np

    from edgeloop.runtime.retrieval.imprint import embedding_identity, image_embedder

    if not args.model:
        def vector(path: Any) -> np.ndarray:
            return _npy(path)
        return None, vector, None
    from .common import engine_from_args

    engine = engine_from_args(args)
    model = engine.load(args.model)
    image = image_embedder(model)

    def embed(source: Any, kind: str | None = None) -> np.ndarray:
        return _npy(source) if isinstance(source, Path) and source.suffix == ".npy" else image(source, kind)

    return engine, embed, embedding_identity(model)


def _npy(path: Any) -> Any:
    import numpy as np

    from edgeloop.runtime.errors import InputError

    if Path(path).suffix != ".npy":
        raise InputError(f"{path} is not a .npy vector", "give --model to embed images")
    try:
        return np.load(path, allow_pickle=False).ravel()
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read vector {path}: {exc}", "give a .npy file saved by numpy.save") from exc


def _open(args: argparse.Namespace) -> Any:
    from edgeloop.runtime.retrieval import VectorIndex

    index = VectorIndex(args.db)
    if index.recovery:
        print(f"edgeloop: index {args.db} was repaired: {index.recovery}", file=sys.stderr)
    return index


def cmd_add(args: argparse.Namespace) -> int:
    from edgeloop.runtime.retrieval import Imprinter

    from .common import print_json

    engine, embed, identity = _embedder(args)
    try:
        with _open(args) as index:
            first = embed(Path(args.inputs[0]))
            if args.collection in index.names():
                c = index.collection(args.collection, model=identity[0] if identity else None,
                                     model_version=identity[1] if identity else None)
            else:
                c = index.create(args.collection, int(first.size), storage=args.storage, cells=args.cells,
                                 model=identity[0] if identity else None,
                                 model_version=identity[1] if identity else None)
            imprinter = Imprinter(c, lambda src: embed(Path(src)))
            ids = [imprinter.add(args.label, path) for path in args.inputs]
            stats = c.stats()
    finally:
        if engine is not None:
            engine.close()
    if args.json:
        print_json({"added": ids, "collection": stats})
    else:
        print(f"added {len(ids)} to '{args.collection}' ({stats['items']} items)")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from edgeloop.runtime.errors import ConfigError
    from edgeloop.runtime.retrieval import Imprinter
    from edgeloop.runtime.retrieval.imprint import DEFAULT_THRESHOLD

    from .common import print_json

    where = {}
    for pair in args.where:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--where: '{pair}' is not COLUMN=VALUE", "write it as --where site=north")
        where[key] = _typed(value)
    engine, embed, identity = _embedder(args)
    try:
        with _open(args) as index:
            c = index.collection(args.collection, model=identity[0] if identity else None,
                                 model_version=identity[1] if identity else None)
            vector = embed(Path(args.input))
            hits = c.query(vector, args.k, where=where or None)
            decision = None
            if args.classify:
                imprinter = Imprinter(c, lambda _: vector, k=args.k,
                                      threshold=args.threshold if args.threshold is not None else DEFAULT_THRESHOLD)
                decision = imprinter.classify(args.input)
    finally:
        if engine is not None:
            engine.close()
    out = {"neighbours": [h._asdict() for h in hits]}
    if decision is not None:
        out["decision"] = {"label": decision.label, "distance": decision.distance, "votes": decision.votes}
    if args.json:
        print_json(out)
        return 0
    for h in hits:
        print(f"{h.distance:8.4f}  {h.id:<40} {h.label or ''}")
    if decision is not None:
        print(f"decision: {decision.label} (nearest {decision.distance:.4f})")
    return 0


def _typed(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(value, value)


def cmd_stats(args: argparse.Namespace) -> int:
    from .common import print_json

    with _open(args) as index:
        stats = {name: index.collection(name).stats() for name in index.names()}
    size = args.db.stat().st_size
    if args.json:
        print_json({"path": str(args.db), "bytes": size, "collections": stats})
        return 0
    print(f"{args.db}: {size:,} bytes")
    for name, s in stats.items():
        print(f"  {name}: {s['items']} items, dim {s['dim']}, {s['storage']}, {s['metric']}, "
              f"model {s['model']} {s['model_version']}, version {s['version']}, labels {s['labels']}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from edgeloop.runtime.retrieval import export_delta

    from .common import print_json

    with _open(args) as index:
        c = index.collection(args.collection)
        data = export_delta(c, since=args.since, metadata_keys=[k for k in args.metadata.split(",") if k])
        version = c.spec.version
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)  # a delta file is whole or absent
    report = {"out": str(args.out), "bytes": len(data), "since": args.since, "version": version}
    print_json(report) if args.json else print(f"wrote {args.out} ({len(data):,} bytes, version {version})")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from edgeloop.runtime.errors import ConfigError
    from edgeloop.runtime.retrieval.delta import import_into

    from .common import print_json

    try:
        data = args.delta.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.delta}: {exc}", "give the path of a delta file") from exc
    with _open(args) as index:
        name, report = import_into(index, data, args.storage)
    print_json(report) if args.json else print(f"'{name}': {report['upserted']} upserted, {report['deleted']} deleted")
    return 0


def cmd_rebuild(args: argparse.Namespace) -> int:
    from edgeloop.runtime.errors import ConfigError

    from .common import print_json

    if not args.model:
        raise ConfigError("--model is required to rebuild", "name the embedding model to re-embed with")
    engine, embed, identity = _embedder(args)
    try:
        with _open(args) as index:
            report = index.collection(args.collection).rebuild(embed, *identity)  # type: ignore[misc]
    finally:
        engine.close()
    print_json(report) if args.json else print(f"re-embedded {report['reembedded']}, dropped {report['dropped']} "
                                               "without a source")
    return 0
