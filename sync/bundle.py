"""A model bundle's own description, ``bundle.toml``: its files, the golden set and its bounds,
and the probation a device holds the new version to before it commits.

```toml
schema = 1
model = "digits"
version = "1.1.0"
manifest = "manifest.toml"          # the model's entry, in the format of models/manifest.toml
files = ["manifest.toml", "digits.tflite", "digits_labels.txt", "golden.npz"]

[golden]
file = "golden.npz"                 # inputs (as fed), labels (true top-1), expected (scores at release)
min_top1 = 1.0                      # the share of inputs whose top-1 must be the label
max_abs = 0.1                       # the largest |score - expected score| allowed, dequantized

[probation]                          # after the golden set, on live traffic
window_s = 30.0
min_requests = 20
p95_ms = 5.0                        # optional
max_error_rate = 0.01
max_stepdowns = 0
require_delegate = false
min_agreement = 0.0                 # with the old model, in shadow; 0: not checked
```

Every file is a TUF target of its own under ``{group}/{model}/{version}/``; this file only
names them. It is signed, but still checked as untrusted input: a name is one plain file name.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from edgeloop.runtime.errors import EdgeloopError

SCHEMA = 1
MAX_BYTES = 64 * 1024
MAX_FILES = 32
_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$")


class BundleError(EdgeloopError):
    """A bundle's description is malformed or its files do not fit it."""


@dataclass(frozen=True)
class GoldenBounds:
    file: str
    min_top1: float = 1.0
    max_abs: float | None = None


@dataclass(frozen=True)
class ProbationSpec:
    window_s: float = 30.0
    min_requests: int = 20
    p95_ms: float | None = None
    max_error_rate: float = 0.01
    max_stepdowns: int = 0
    require_delegate: bool = False
    min_agreement: float = 0.0


@dataclass(frozen=True)
class BundleSpec:
    model: str
    version: str
    manifest: str
    files: tuple[str, ...]
    golden: GoldenBounds
    probation: ProbationSpec = field(default_factory=ProbationSpec)

    def to_toml(self) -> str:
        g, p = self.golden, self.probation
        lines = [f"schema = {SCHEMA}", f'model = "{self.model}"', f'version = "{self.version}"',
                 f'manifest = "{self.manifest}"', "files = [" + ", ".join(f'"{f}"' for f in self.files) + "]",
                 "", "[golden]", f'file = "{g.file}"', f"min_top1 = {g.min_top1!r}"]
        if g.max_abs is not None:
            lines.append(f"max_abs = {g.max_abs!r}")
        lines += ["", "[probation]", f"window_s = {p.window_s!r}", f"min_requests = {p.min_requests}",
                  f"max_error_rate = {p.max_error_rate!r}", f"max_stepdowns = {p.max_stepdowns}",
                  f"require_delegate = {'true' if p.require_delegate else 'false'}",
                  f"min_agreement = {p.min_agreement!r}"]
        if p.p95_ms is not None:
            lines.append(f"p95_ms = {p.p95_ms!r}")
        return "\n".join(lines) + "\n"


def _number(table: dict[str, Any], key: str, where: str, default: Any, lo: float, hi: float,
            kind: type = float) -> Any:
    value = table.get(key, default)
    if value is None:
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise BundleError(f"bundle.toml: {where}.{key} is {value!r}, not true or false", "fix the release")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)) \
            or not math.isfinite(value) or not lo <= value <= hi:
        raise BundleError(f"bundle.toml: {where}.{key} is {value!r}, not a {kind.__name__} within {lo}..{hi}",
                          "fix the release")
    return kind(value)


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _FILE.fullmatch(value) or value in (".", ".."):
        raise BundleError(f"bundle.toml: {what} {value!r} is not a plain file name",
                          "name files with letters, digits, '.', '_' or '-', no folders")
    return value


def parse_bundle(data: bytes) -> BundleSpec:
    """The description in ``data``; BundleError naming the key that is wrong."""
    if len(data) > MAX_BYTES:
        raise BundleError(f"bundle.toml is {len(data)} bytes, over {MAX_BYTES}", "fix the release")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise BundleError(f"bundle.toml does not parse: {exc}", "fix the release") from None
    if doc.get("schema") != SCHEMA:
        raise BundleError(f"bundle.toml: schema {doc.get('schema')!r}, this device reads {SCHEMA}",
                          "release the bundle for this device's edgeloop, or update the device")
    model, version = doc.get("model"), doc.get("version")
    _name(model, "model")
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise BundleError(f"bundle.toml: version {version!r} is not a version string", "e.g. \"1.2.0\"")
    files = doc.get("files")
    if not isinstance(files, list) or not files or len(files) > MAX_FILES:
        raise BundleError(f"bundle.toml: files must list 1-{MAX_FILES} file names", "fix the release")
    names = tuple(_name(f, "file") for f in files)
    if len(set(names)) != len(names):
        raise BundleError("bundle.toml: a file is listed twice", "fix the release")
    manifest = _name(doc.get("manifest", "manifest.toml"), "manifest")
    golden = doc.get("golden")
    if not isinstance(golden, dict):
        raise BundleError("bundle.toml: no [golden] table", "a bundle carries its golden set")
    bounds = GoldenBounds(_name(golden.get("file"), "golden.file"),
                          _number(golden, "min_top1", "golden", 1.0, 0.0, 1.0),
                          _number(golden, "max_abs", "golden", None, 0.0, 1e6))
    for needed in (manifest, bounds.file):
        if needed not in names:
            raise BundleError(f"bundle.toml: {needed} is not among the files", "list every file of the bundle")
    p = doc.get("probation", {})
    if not isinstance(p, dict):
        raise BundleError("bundle.toml: [probation] is not a table", "fix the release")
    probation = ProbationSpec(
        window_s=_number(p, "window_s", "probation", 30.0, 0.0, 86400.0),
        min_requests=_number(p, "min_requests", "probation", 20, 0, 10**9, int),
        p95_ms=_number(p, "p95_ms", "probation", None, 0.0, 1e6),
        max_error_rate=_number(p, "max_error_rate", "probation", 0.01, 0.0, 1.0),
        max_stepdowns=_number(p, "max_stepdowns", "probation", 0, 0, 10**9, int),
        require_delegate=_number(p, "require_delegate", "probation", False, 0, 1, bool),
        min_agreement=_number(p, "min_agreement", "probation", 0.0, 0.0, 1.0))
    return BundleSpec(model, version, manifest, names, bounds, probation)
