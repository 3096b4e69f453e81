"""Signed bundles: a real TUF repository made by `edgeloop release`'s code (python-tuf's own
metadata API), served by a real HTTP server on loopback, read by the device's ngclient.
Each attack TUF exists for is refused with its typed error; a good bundle arrives verified."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from edgeloop.sync.bundle import ProbationSpec
from edgeloop.sync.bundle_trust import BundleTrust, TrustError
from edgeloop.sync.fetch import Fetcher, FetchPolicy, Progress
from edgeloop.tools.release.bundle import make_bundle
from edgeloop.tools.release.repository import ReleaseRepository
from edgeloop.tools.testing.bundle_server import BundleServer

CANDIDATES = REPO / "tests" / "data" / "rollout"
FAST = FetchPolicy(backoff_s=0.01, backoff_cap_s=0.05, permanent_tries=1)


def release(repo: ReleaseRepository, tmp: Path, name: str, group: str = "cams", check: bool = True) -> str:
    folder = tmp / f"bundle-{name}"
    spec = make_bundle(CANDIDATES / f"{name}.toml", "digits", folder, ProbationSpec(window_s=1.0), check=check)
    repo.add_bundle(group, spec, folder)
    repo.publish()
    return spec.version


@pytest.fixture
def signed(tmp_path):
    repo = ReleaseRepository(tmp_path / "repo", tmp_path / "keys")
    repo.init(["cams"])
    version = release(repo, tmp_path, "digits_v2")
    image_root = tmp_path / "image-root.json"
    shutil.copyfile(repo.metadata / "root.json", image_root)  # what the device image ships
    with BundleServer(repo.repo) as server:
        yield repo, server, version, image_root, tmp_path


def device(server, image_root, tmp_path, **kw) -> BundleTrust:
    return BundleTrust(tmp_path / "device" / "tuf", server.url, image_root, **kw)


def test_a_signed_bundle_arrives_whole_and_verified(signed):
    repo, server, version, root, tmp = signed
    progress = Progress(0)
    got = device(server, root, tmp).fetch_bundle("cams", "digits", version, tmp / "slot", Fetcher(FAST), progress)
    assert got.spec.version == "1.1.0" and got.targets_version == 2
    assert progress.have == progress.length == progress.fetched == sum(n for p, n in server.sent.items() if p.startswith("targets/"))
    again = Progress(0)  # every file already here and verified: nothing fetched again
    device(server, root, tmp).fetch_bundle("cams", "digits", version, tmp / "slot", Fetcher(FAST), again)
    assert again.have == again.length == progress.length and again.fetched == 0
    for name in got.spec.files:
        assert (got.folder / name).read_bytes() == (tmp / "bundle-digits_v2" / name).read_bytes()


def test_a_version_not_signed_for_the_group_is_refused(signed):
    repo, server, version, root, tmp = signed
    with pytest.raises(TrustError) as err:
        device(server, root, tmp).fetch_bundle("cams", "digits", "9.9.9", tmp / "slot", Fetcher(FAST))
    assert err.value.kind == "not signed"


def test_rollback_older_metadata_than_trusted_is_refused(signed):
    repo, server, version, root, tmp = signed
    old = (repo.metadata / "timestamp.json").read_bytes()
    release(repo, tmp, "digits_bad", check=False)
    trust = device(server, root, tmp)
    trust.refresh()  # trusts the newer timestamp now
    (repo.metadata / "timestamp.json").write_bytes(old)  # a replayed or stale mirror
    with pytest.raises(TrustError) as err:
        trust.refresh()
    assert err.value.kind == "rollback" and "timestamp" in str(err.value)


def test_freeze_expired_metadata_is_refused(signed):
    repo, server, version, root, tmp = signed
    repo.timestamp(days=-1)  # the release machine stopped signing: a mirror freezes the fleet on it
    with pytest.raises(TrustError) as err:
        device(server, root, tmp).refresh()
    assert err.value.kind == "freeze" and "expired" in str(err.value).lower()


def test_mix_and_match_metadata_from_different_releases_is_refused(signed):
    repo, server, version, root, tmp = signed
    older_snapshot = max(repo.metadata.glob("*.snapshot.json"), key=lambda p: int(p.name.split(".")[0])).read_bytes()
    release(repo, tmp, "digits_bad", check=False)
    newest = max(repo.metadata.glob("*.snapshot.json"), key=lambda p: int(p.name.split(".")[0]))
    newest.write_bytes(older_snapshot)  # the new timestamp, an old snapshot under the new name
    with pytest.raises(TrustError) as err:
        device(server, root, tmp).refresh()
    assert err.value.kind == "mix-and-match"


def test_a_target_file_swapped_on_the_server_is_refused_by_its_hash(signed):
    repo, server, version, root, tmp = signed
    stored = next((repo.targets_dir / "cams" / "digits" / version).glob("*.digits_v2.tflite"))
    data = bytearray(stored.read_bytes())
    data[100] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(TrustError) as err:
        device(server, root, tmp).fetch_bundle("cams", "digits", version, tmp / "slot", Fetcher(FAST))
    assert err.value.kind == "wrong hash" and not (tmp / "slot" / "digits_v2.tflite").exists()


def test_metadata_changed_without_its_keys_is_refused(signed):
    repo, server, version, root, tmp = signed
    path = repo.metadata / "timestamp.json"
    doc = json.loads(path.read_text())
    doc["signed"]["expires"] = "2099-01-01T00:00:00Z"  # a longer life, not signed by the timestamp key
    path.write_text(json.dumps(doc))
    with pytest.raises(TrustError) as err:
        device(server, root, tmp).refresh()
    assert err.value.kind == "bad signature"


def test_an_install_waits_for_a_sane_clock(signed):
    repo, server, version, root, tmp = signed
    with pytest.raises(TrustError) as err:
        device(server, root, tmp, clock=lambda: 0.0).refresh()  # a Pi after boot, before NTP
    assert err.value.kind == "clock" and "1970-01-01" in str(err.value)
    assert not server.requests  # nothing was even asked for


def test_keys_readable_by_others_are_refused(signed):
    repo, server, version, root, tmp = signed
    (repo.keys / "timestamp.pem").chmod(0o644)
    from edgeloop.runtime.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        repo.timestamp()
    assert "chmod 600" in str(err.value)


def test_the_release_command_signs_what_a_device_then_fetches(tmp_path, capsys):
    from edgeloop.tools.cli import main

    flags = ["--repo", str(tmp_path / "repo"), "--keys", str(tmp_path / "keys")]
    assert main(["release", "init", *flags, "--group", "cams", "--group", "root"]) == 2  # a TUF role's name
    assert not (tmp_path / "repo").exists() and not (tmp_path / "keys").exists()  # nothing half made
    assert main(["release", "init", *flags, "--group", "cams"]) == 0
    add = ["release", "add", *flags, "--group", "cams", "--model", "digits", "--p95-ms", "5"]
    assert main([*add, "--manifest", str(CANDIDATES / "digits_v2.toml")]) == 0
    assert main([*add, "--manifest", str(CANDIDATES / "digits_bad.toml")]) == 2  # fails its golden set here
    assert "fails its own golden set" in capsys.readouterr().err
    # What every device would refuse is not signed: the release runs the devices' own check.
    assert main([*add[:-1], "-3", "--manifest", str(CANDIDATES / "digits_slow.toml")]) == 2
    assert "probation.p95_ms is -3.0" in capsys.readouterr().err
    assert main(["release", "list", *flags, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"cams": {"digits": ["1.1.0"]}}
    with BundleServer(tmp_path / "repo") as server:
        got = BundleTrust(tmp_path / "tuf", server.url, tmp_path / "repo" / "metadata" / "root.json").fetch_bundle(
            "cams", "digits", "1.1.0", tmp_path / "slot", Fetcher(FAST))
        assert got.spec.probation.p95_ms == 5.0
        assert main(["release", "remove", *flags, "--group", "cams", "--model", "digits", "--version", "1.1.0"]) == 0
        with pytest.raises(TrustError) as err:  # the next metadata no longer signs it
            BundleTrust(tmp_path / "tuf", server.url, tmp_path / "repo" / "metadata" / "root.json").fetch_bundle(
                "cams", "digits", "1.1.0", tmp_path / "slot2", Fetcher(FAST))
        assert err.value.kind == "not signed"
