"""The model manifest (TOML): what each model is, where its files are, how to feed and read it.

```toml
schema = 1

[models.NAME]
version = "1.0.0"
task = "classification"            # free text for people; `output.decode` drives decoding
file = "NAME.tflite"                # the CPU variant (omit for a delegate-only model)
sha256 = "…"                        # of `file`
card = "cards/NAME.md"

[models.NAME.variants.edgetpu]      # one table per delegate-specific compiled file
file = "NAME_edgetpu.tflite"
sha256 = "…"

[models.NAME.input]                 # all optional
layout = "NHWC"                     # NHWC | NCHW | NHW (grey images without a channel axis)
color = "RGB"                       # RGB | BGR | GRAY
resize = "bilinear"                 # bilinear | nearest | area
mean = 127.5                        # real = (pixel - mean) / std, then quantized by the model's
std = 127.5                         #   own scale/zero point; omit both to feed pixels as-is
dtype = "uint8"; scale = 0.0078125; zero_point = 128   # expectations, checked at load

[models.NAME.output]
decode = "classification"           # classification | embedding | detection | raw
labels = "NAME_labels.txt"

[[models.NAME.golden]]              # checked by `edgeloop models verify`
input = "samples/x.png"             # an image, or a .npy fed as-is
top1 = 3
```

Paths are relative to the manifest's folder (absolute paths are allowed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgeloop.runtime.errors import ManifestError

SCHEMA = 1
LAYOUTS = ("NHWC", "NCHW", "NHW")
COLORS = ("RGB", "BGR", "GRAY")
RESIZES = ("bilinear", "nearest", "area")
DECODERS = ("classification", "embedding", "detection", "raw")
CPU = "cpu"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class Artifact:
    """One model file and where it runs (``cpu`` or a delegate kind)."""

    file: Path
    sha256: str | None
    target: str = CPU


@dataclass(frozen=True)
class InputSpec:
    layout: str = "NHWC"
    color: str = "RGB"
    resize: str = "bilinear"
    mean: float | None = None
    std: float | None = None
    dtype: str | None = None
    scale: float | None = None
    zero_point: int | None = None


@dataclass(frozen=True)
class OutputSpec:
    decode: str = "raw"
    labels: Path | None = None
    index: int = 0  # the output the decoder reads (classification, embedding)
    embedding: int | None = None  # the index of an output that is an embedding, next to the decoded one


@dataclass(frozen=True)
class GoldenCase:
    input: Path
    top1: int | None = None


@dataclass(frozen=True)
class ModelEntry:
    """A model: its variants, input and output specs, and checks."""

    name: str
    version: str
    artifacts: Mapping[str, Artifact]
    input: InputSpec = InputSpec()
    output: OutputSpec = OutputSpec()
    task: str = ""
    golden: tuple[GoldenCase, ...] = ()
    card: Path | None = None
    registered: bool = True
    source: Path | None = None  # the manifest it came from
    accuracy: float | None = None  # held-out accuracy the builder measured, if any
    baseline: Mapping[str, tuple[float, ...]] | None = None  # feature histograms of the held-out data (drift)

    @property
    def cpu(self) -> Artifact | None:
        return self.artifacts.get(CPU)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "task": self.task,
            "registered": self.registered,
            "variants": {k: {"file": str(a.file), "sha256": a.sha256} for k, a in self.artifacts.items()},
        }


@dataclass
class _Reader:
    """Typed access to one TOML table with errors that name the full key."""

    table: Mapping[str, Any]
    where: str
    manifest: Path
    base: Path = field(init=False)

    def __post_init__(self) -> None:
        self.base = self.manifest.parent

    def fail(self, key: str, problem: str, fix: str) -> ManifestError:
        return ManifestError(f"{self.manifest}: {self.where}.{key} {problem}", fix)

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None, *,
            required: bool = False, choices: tuple[str, ...] | None = None) -> Any:
        if key not in self.table:
            if required:
                raise self.fail(key, "is missing", f"add {key} = … to [{self.where}]")
            return default
        value = self.table[key]
        if isinstance(value, bool) and kind is not bool:
            value = None  # TOML true/false is never a valid number or string here
        if not isinstance(value, kind):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
            raise self.fail(key, f"must be a {names}, got {self.table[key]!r}", f"fix {key} in [{self.where}]")
        if choices is not None and value not in choices:
            raise self.fail(key, f"is '{value}'", f"use one of {', '.join(choices)}")
        return value

    def path(self, key: str, *, required: bool = False) -> Path | None:
        value = self.get(key, str, required=required)
        return None if value is None else (self.base / value).resolve()

    def sha256(self, key: str = "sha256") -> str:
        value = self.get(key, str, required=True).lower()
        if not _SHA256.match(value):
            raise self.fail(key, f"is not 64 hex characters: '{value}'",
                            "put the file's sha256 there (sha256sum FILE)")
        return value

    def only(self, *allowed: str) -> None:
        """Reject keys this table does not know: a typo must not be ignored."""
        for key in self.table:
            if key not in allowed:
                raise self.fail(key, "is not a known key", f"use one of {', '.join(allowed)}")

    def sub(self, key: str) -> "_Reader":
        value = self.get(key, dict, {})
        return _Reader(value, f"{self.where}.{key}", self.manifest)


def _entry(name: str, r: _Reader) -> ModelEntry:
    if not _NAME.match(name):
        raise ManifestError(f"{r.manifest}: model name '{name}' has characters that are not allowed",
                            "use letters, digits, '_', '-' and '.'")
    r.only("version", "task", "file", "sha256", "card", "variants", "input", "output", "golden", "accuracy",
           "baseline")
    artifacts: dict[str, Artifact] = {}
    if "file" in r.table:
        artifacts[CPU] = Artifact(r.path("file", required=True), r.sha256(), CPU)
    variants = r.sub("variants")
    for target in variants.table:
        v = variants.sub(target)
        v.only("file", "sha256")
        if target == CPU:
            raise v.fail("", "duplicates the top-level file", "put the CPU model in file/sha256")
        artifacts[target] = Artifact(v.path("file", required=True), v.sha256(), target)
    if not artifacts:
        raise r.fail("file", "is missing (and there are no variants)", "add file = … and sha256 = …")

    i = r.sub("input")
    i.only("layout", "color", "resize", "mean", "std", "dtype", "scale", "zero_point")
    mean, std, scale = (i.get(k, (int, float)) for k in ("mean", "std", "scale"))
    if (mean is None) != (std is None):
        raise i.fail("mean", "and std must be given together", "set both or neither")
    if std is not None and std == 0:
        raise i.fail("std", "is 0", "use the standard deviation the model was trained with")
    input_spec = InputSpec(
        layout=i.get("layout", str, "NHWC", choices=LAYOUTS),
        color=i.get("color", str, "RGB", choices=COLORS),
        resize=i.get("resize", str, "bilinear", choices=RESIZES),
        mean=None if mean is None else float(mean),
        std=None if std is None else float(std),
        dtype=i.get("dtype", str, choices=("uint8", "int8", "int16", "float32")),
        scale=None if scale is None else float(scale),
        zero_point=i.get("zero_point", int),
    )
    o = r.sub("output")
    o.only("decode", "labels", "index", "embedding")
    index, embedding = o.get("index", int, 0), o.get("embedding", int, None)
    for key, value in (("index", index), ("embedding", embedding)):
        if value is not None and value < 0:
            raise o.fail(key, f"{value} is not an output index", "count outputs from 0")
    output_spec = OutputSpec(decode=o.get("decode", str, "raw", choices=DECODERS), labels=o.path("labels"),
                             index=index, embedding=embedding)
    golden = []
    for n, case in enumerate(r.get("golden", list, [])):
        if not isinstance(case, dict):
            raise r.fail(f"golden[{n}]", "must be a table", "use [[models.NAME.golden]]")
        g = _Reader(case, f"{r.where}.golden[{n}]", r.manifest)
        g.only("input", "top1")
        golden.append(GoldenCase(g.path("input", required=True), g.get("top1", int)))
    return ModelEntry(
        name=name,
        version=r.get("version", str, required=True),
        artifacts=artifacts,
        input=input_spec,
        output=output_spec,
        task=r.get("task", str, ""),
        golden=tuple(golden),
        card=r.path("card"),
        registered=True,
        source=r.manifest,
        accuracy=r.get("accuracy", float),
        baseline=_baseline(r),
    )


def _baseline(r: "_Reader") -> dict[str, tuple[float, ...]] | None:
    """``[models.NAME.baseline]``: per feature, the held-out data's histogram (fractions)."""
    table = r.get("baseline", dict)
    if table is None:
        return None
    out = {}
    for key, values in table.items():
        if not isinstance(values, list) or not values or not all(isinstance(v, (int, float)) for v in values):
            raise r.fail(f"baseline.{key}", "must be a list of fractions", "rebuild it with the model's tool")
        out[key] = tuple(float(v) for v in values)
    return out


def parse_manifest(data: Mapping[str, Any], path: Path) -> dict[str, ModelEntry]:
    top = _Reader(data, "manifest", path)
    top.only("schema", "models")
    schema = top.get("schema", int, required=True)
    if schema != SCHEMA:
        raise top.fail("schema", f"is {schema}; this edgeloop reads schema {SCHEMA}",
                       "upgrade edgeloop or rewrite the manifest")
    models = top.sub("models")
    return {name: _entry(name, models.sub(name)) for name in models.table}


def load_manifest(path: Path) -> dict[str, ModelEntry]:
    """Read and validate one manifest file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    path = Path(path).resolve()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest {path} does not exist", "check the path (--manifest, EDGELOOP_MANIFEST)") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} is not valid TOML: {exc}", "fix the syntax at that line") from exc
    return parse_manifest(data, path)
