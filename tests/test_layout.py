"""The layout's rules, read from the source: which folder may import which (DESIGN's import
rule), and that the built wheel holds every subpackage (setuptools finds them; none is listed
by hand)."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

TOP = ("runtime", "models", "sync", "firmware_bridge", "tools")
# What sync/, firmware_bridge/ and models/ may take from runtime/: the small shared parts.
SHARED_RUNTIME = ("errors", "logs", "sqlite_files", "durable_file", "source_bytes", "tensors", "image_input",
                  "retrieval", "watchdog.rungs")


def _imports(path: Path) -> list[str]:
    """The absolute ``edgeloop.*`` names a file imports (relative imports resolved)."""
    package = ["edgeloop", *path.relative_to(REPO).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            found += [f"{module}.{a.name}" for a in node.names]  # a name may be a module or a class
    return [m for m in found if m.startswith("edgeloop.")]


def _violations() -> list[str]:
    out = []
    for top in TOP:
        for path in sorted((REPO / top).rglob("*.py")):
            for module in _imports(path):
                parts = module.split(".")
                target = parts[1] if len(parts) > 1 else ""
                where = f"{path.relative_to(REPO)} imports {module}"
                if target == "tools" and top != "tools":
                    out.append(f"{where}: nothing outside tools/ imports tools/")
                elif top in ("sync", "firmware_bridge", "models") and target == "runtime":
                    rest = ".".join(parts[2:])
                    if not any(rest == s or rest.startswith(s + ".") for s in SHARED_RUNTIME):
                        out.append(f"{where}: {top}/ takes only {', '.join(SHARED_RUNTIME)} from runtime/")
                elif top == "runtime" and target in ("sync", "firmware_bridge") and \
                        not path.relative_to(REPO).parts[1:2] == ("agent",):
                    out.append(f"{where}: only runtime/agent/ composes the other folders")
    return out


def test_the_import_rule_holds():
    assert _violations() == []


def test_the_import_rule_check_catches_a_violation(tmp_path, monkeypatch):
    """The checker itself: a runtime module importing tools is reported."""
    bad = REPO / "runtime" / "_layout_probe.py"
    bad.write_text("from edgeloop.tools.cli import main\n")
    try:
        assert any("_layout_probe.py imports edgeloop.tools.cli" in v for v in _violations())
    finally:
        bad.unlink()


@pytest.mark.skipif(not (REPO / "setup.py").exists(), reason="needs the source tree")
def test_the_wheel_holds_every_subpackage(tmp_path):
    import shutil

    # Built from a copy: setuptools' build/ folder in the tree would keep modules since deleted.
    source = tmp_path / "src"
    skip = shutil.ignore_patterns(".git", ".venv*", "__pycache__", "*.egg-info", "*.so", ".edgeloop-demo")

    def ignore(folder: str, names: list[str]) -> set[str]:
        top = {"build", "dist"} & set(names) if Path(folder) == REPO else set()
        return set(skip(folder, names)) | top

    shutil.copytree(REPO, source, ignore=ignore)
    out = tmp_path / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True, timeout=600)
    wheel = next(out.glob("edgeloop-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    wanted = sorted(f"edgeloop/{p.parent.relative_to(REPO).as_posix()}/__init__.py"
                    for top in TOP for p in (REPO / top).rglob("__init__.py"))
    assert wanted and [w for w in wanted if w not in names] == []
    assert "edgeloop/tools/deploy/edgeloop.service" in names and "edgeloop/models/manifest.toml" in names
