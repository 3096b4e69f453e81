"""Manifest validation: every error names the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import REPO

from edgeloop.models.manifest import load_manifest
from edgeloop.models.store import ModelStore, sha256_of
from edgeloop.runtime.errors import ManifestError

GOOD_SHA = "a" * 64


def manifest(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "manifest.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("", r"manifest\.schema is missing: add schema = … to \[manifest\]"),
    ("schema = 2", r"manifest\.schema is 2; this edgeloop reads schema 1"),
    ("schema = 1\n[models.m]\nversion = '1'\n", r"manifest\.models\.m\.file is missing \(and there are no variants\)"),
    ("schema = 1\n[models.m]\nversion = '1'\nfile = 'm.tflite'\n", r"manifest\.models\.m\.sha256 is missing"),
    ("schema = 1\n[models.m]\nversion = '1'\nfile = 'm.tflite'\nsha256 = 'abc'\n",
     r"models\.m\.sha256 is not 64 hex characters: 'abc': put the file's sha256 there"),
    (f"schema = 1\n[models.m]\nfile = 'm.tflite'\nsha256 = '{GOOD_SHA}'\n", r"models\.m\.version is missing"),
    (f"schema = 1\n[models.m]\nversion = 1\nfile = 'm.tflite'\nsha256 = '{GOOD_SHA}'\n",
     r"models\.m\.version must be a str, got 1"),
    (f"schema = 1\n[models.m]\nversion = '1'\nfile = 'm.tflite'\nsha256 = '{GOOD_SHA}'\nsah256 = 'x'\n",
     r"models\.m\.sah256 is not a known key: use one of version, task, file, sha256"),
    (f"schema = 1\n[models.m]\nversion = '1'\nfile = 'm.tflite'\nsha256 = '{GOOD_SHA}'\n[models.m.input]\ncolor = 'CMYK'\n",
     r"models\.m\.input\.color is 'CMYK': use one of RGB, BGR, GRAY"),
    (f"schema = 1\n[models.m]\nversion = '1'\nfile = 'm.tflite'\nsha256 = '{GOOD_SHA}'\n[models.m.input]\nmean = 1.0\n",
     r"models\.m\.input\.mean and std must be given together"),
    (f"schema = 1\n[models.m]\nversion = '1'\nfile = 'm.tflite'\nsha256 = '{GOOD_SHA}'\n[models.m.output]\ndecode = 'yolo'\n",
     r"models\.m\.output\.decode is 'yolo': use one of classification, embedding, detection, raw"),
    ("schema = 1\n[models.m\n", r"is not valid TOML"),
])
def test_bad_manifests_name_key_and_fix(tmp_path, text, message):
    with pytest.raises(ManifestError, match=message):
        load_manifest(manifest(tmp_path, text))


def test_missing_manifest_names_the_path(tmp_path):
    with pytest.raises(ManifestError, match=r"manifest .*nope\.toml does not exist: check the path"):
        ModelStore([tmp_path / "nope.toml"])


def test_duplicate_model_across_manifests(tmp_path):
    text = f"schema = 1\n[models.m]\nversion = '1'\nfile = 'm.tflite'\nsha256 = '{GOOD_SHA}'\n"
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(text)
    b.write_text(text)
    with pytest.raises(ManifestError, match="model 'm' is registered twice"):
        ModelStore([a, b], bundled=False)


def test_paths_resolve_relative_to_the_manifest(tmp_path):
    m = load_manifest(manifest(tmp_path, f"schema = 1\n[models.m]\nversion = '1'\nfile = 'sub/m.tflite'\n"
                                         f"sha256 = '{GOOD_SHA}'\n[models.m.variants.edgetpu]\n"
                                         f"file = 'm_edgetpu.tflite'\nsha256 = '{GOOD_SHA}'\n"))["m"]
    assert m.cpu.file == tmp_path / "sub" / "m.tflite"
    assert m.artifacts["edgetpu"].file == tmp_path / "m_edgetpu.tflite"
    assert m.artifacts["edgetpu"].target == "edgetpu"


def test_bundled_manifest_hashes_match_committed_files():
    store = ModelStore()
    assert store.manifests[0] == REPO / "models" / "manifest.toml"
    entries = store.entries()
    assert entries, "the bundled manifest registers the demo models"
    for entry in entries:
        for artifact in entry.artifacts.values():
            assert sha256_of(artifact.file) == artifact.sha256, artifact.file
