"""A TUF repository of model bundles, written and signed with python-tuf's own metadata API.

The directory is served as it is by any static HTTP server:

    metadata/1.root.json, root.json      the trust anchor (root.json ships in the device image)
    metadata/N.targets.json              delegates each fleet group to a role of its own
    metadata/N.{group}.json              the group's bundles (paths ``{group}/*/*/*``)
    metadata/N.snapshot.json, timestamp.json
    targets/{group}/{model}/{version}/{sha256}.{file}   (consistent snapshots: names never reused)

Keys (ed25519) are PEM files in a keys directory, one per role, mode 600; the root key
belongs offline (``--keys`` on a removable disk), the others with the release machine.
"""

from __future__ import annotations

import os
import shutil
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import (DelegatedRole, Delegations, Metadata, MetaFile, Root, Snapshot, TargetFile, Targets,
                              Timestamp)
from tuf.api.serialization.json import JSONSerializer

from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.bundle import BundleSpec
from edgeloop.sync.topics import check_name

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
EXPIRY_DAYS = {"root": 365.0, "targets": 180.0, "group": 90.0, "snapshot": 7.0, "timestamp": 1.0}
_JSON = JSONSerializer(compact=False)


def _check_group(group: str) -> None:
    check_name("--group", group)
    if group in TOP_ROLES:
        raise ConfigError(f"release: '{group}' is a TUF role name", "name the group otherwise")


def _expires(days: float) -> datetime:
    return (datetime.now(timezone.utc) + timedelta(days=days)).replace(microsecond=0)


class ReleaseRepository:
    def __init__(self, repo: Path, keys: Path) -> None:
        self.repo = Path(repo)
        self.keys = Path(keys)
        self.metadata = self.repo / "metadata"
        self.targets_dir = self.repo / "targets"

    # -- keys ------------------------------------------------------------------------------

    def _signer(self, role: str) -> CryptoSigner:
        path = self.keys / f"{role}.pem"
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(f"release: no key for role '{role}' at {path}",
                              "give the keys directory made by `edgeloop release init` (--keys)") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"release: {path} is readable by others (mode {stat.S_IMODE(mode):o})",
                              f"chmod 600 {path}")
        return CryptoSigner(load_pem_private_key(path.read_bytes(), password=None))

    def _new_key(self, role: str) -> CryptoSigner:
        signer = CryptoSigner.generate_ed25519()
        path = self.keys / f"{role}.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(signer.private_bytes)
        return signer

    # -- metadata --------------------------------------------------------------------------

    def _path(self, role: str, version: int | None = None) -> Path:
        if role == "timestamp":
            return self.metadata / "timestamp.json"
        return self.metadata / f"{version}.{role}.json"

    def load(self, role: str) -> Metadata[Any]:
        """The newest version of ``role``'s metadata."""
        if role == "timestamp":
            path = self._path("timestamp")
            if not path.exists():
                raise ConfigError(f"release: no timestamp in {self.metadata}", "publish the repository")
            return Metadata.from_file(str(path))
        versions = sorted(int(p.name.split(".", 1)[0]) for p in self.metadata.glob(f"*.{role}.json")
                          if p.name.split(".", 1)[0].isdigit())
        if not versions:
            raise ConfigError(f"release: no metadata for role '{role}' in {self.metadata}",
                              "make the repository with `edgeloop release init`, or name an existing group")
        return Metadata.from_file(str(self._path(role, versions[-1])))

    def _write(self, role: str, md: Metadata[Any], signer_role: str | None = None) -> None:
        md.signatures.clear()
        md.sign(self._signer(signer_role or role))
        md.to_file(str(self._path(role, md.signed.version)), _JSON)
        if role == "root":
            shutil.copyfile(self._path("root", md.signed.version), self.metadata / "root.json")

    def init(self, groups: list[str], expiry_days: dict[str, float] | None = None) -> None:
        """A new repository with fresh keys: the top roles and one delegated role per group."""
        days = {**EXPIRY_DAYS, **(expiry_days or {})}
        for group in groups:  # all checked before anything is written: no half-made repository
            _check_group(group)
        if len(set(groups)) != len(groups):
            raise ConfigError("release: a group is named twice", "name each group once")
        if self.metadata.exists() and any(self.metadata.iterdir()):
            raise ConfigError(f"release: {self.metadata} already holds a repository",
                              "use another --repo, or add groups with `edgeloop release group`")
        self.keys.mkdir(parents=True, exist_ok=True)
        os.chmod(self.keys, 0o700)
        self.metadata.mkdir(parents=True, exist_ok=True)
        self.targets_dir.mkdir(exist_ok=True)
        signers = {role: self._new_key(role) for role in TOP_ROLES}
        root = Root(expires=_expires(days["root"]), consistent_snapshot=True)
        for role, signer in signers.items():
            root.add_key(signer.public_key, role)
        self._write("root", Metadata(root))
        targets = Targets(expires=_expires(days["targets"]))
        targets.delegations = Delegations(keys={}, roles={})
        self._write("targets", Metadata(targets))
        for group in groups:
            self.add_group(group, days["group"], publish=False)
        self.publish(days["snapshot"], days["timestamp"])

    def add_group(self, group: str, expiry_days: float = EXPIRY_DAYS["group"], publish: bool = True) -> None:
        """A fleet group: a role of its own (and key), trusted by targets for the group's paths only."""
        _check_group(group)
        top = self.load("targets")
        assert top.signed.delegations is not None and top.signed.delegations.roles is not None
        if group in top.signed.delegations.roles:
            raise ConfigError(f"release: group '{group}' exists", "add bundles to it with `edgeloop release add`")
        signer = self._new_key(f"group-{group}")
        # {group}/{model}/{version}/{file}: in TUF's patterns a * does not cross a /.
        top.signed.delegations.roles[group] = DelegatedRole(group, [], 1, terminating=True, paths=[f"{group}/*/*/*"])
        top.signed.add_key(signer.public_key, group)
        top.signed.version += 1
        self._write("targets", top)
        self._write(group, Metadata(Targets(expires=_expires(expiry_days))), f"group-{group}")
        if publish:
            self.publish()

    def add_files(self, group: str, prefix: str, files: dict[str, Path]) -> dict[str, TargetFile]:
        """``files`` (name -> local path) as targets ``{group}/{prefix}/{name}`` of the group's role;
        returns the target entries. Published with ``publish()``."""
        role = self.load(group)
        added = {}
        for name, local in files.items():
            path = f"{group}/{prefix}/{name}"
            target = TargetFile.from_file(path, str(local), ["sha256"])
            stored = self.targets_dir / group / prefix / f"{target.hashes['sha256']}.{name}"
            stored.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, stored)
            role.signed.targets[path] = added[path] = target
        role.signed.version += 1
        role.signed.expires = max(role.signed.expires, _expires(EXPIRY_DAYS["group"]))
        self._write(group, role, f"group-{group}")
        return added

    def add_bundle(self, group: str, spec: BundleSpec, folder: Path) -> dict[str, TargetFile]:
        """A bundle made by ``make_bundle`` in ``folder`` (its files and ``bundle.toml``) as the
        targets ``{group}/{model}/{version}/…``. Published with ``publish()``."""
        return self.add_files(group, f"{spec.model}/{spec.version}",
                              {name: folder / name for name in (*spec.files, "bundle.toml")})

    def remove_prefix(self, group: str, prefix: str) -> int:
        """Take every target under ``{group}/{prefix}/`` out of the signed metadata (the files
        stay: a device mid-download of them is refused by the next metadata it reads)."""
        role = self.load(group)
        gone = [p for p in role.signed.targets if p.startswith(f"{group}/{prefix}/")]
        for path in gone:
            del role.signed.targets[path]
        if gone:
            role.signed.version += 1
            self._write(group, role, f"group-{group}")
        return len(gone)

    def targets(self, group: str) -> dict[str, TargetFile]:
        return dict(self.load(group).signed.targets)

    def groups(self) -> list[str]:
        roles = self.load("targets").signed.delegations
        return list(roles.roles) if roles is not None and roles.roles is not None else []

    def publish(self, snapshot_days: float = EXPIRY_DAYS["snapshot"],
                timestamp_days: float = EXPIRY_DAYS["timestamp"]) -> int:
        """A new snapshot of every targets role's newest version and a timestamp for it;
        returns the snapshot version. ``timestamp_days`` may be negative (a test's frozen repository)."""
        meta = {"targets.json": MetaFile(self.load("targets").signed.version)}
        for group in self.groups():
            meta[f"{group}.json"] = MetaFile(self.load(group).signed.version)
        try:
            old = self.load("snapshot").signed.version
        except ConfigError:
            old = 0
        snapshot = Snapshot(version=old + 1, expires=_expires(snapshot_days), meta=meta)
        self._write("snapshot", Metadata(snapshot))
        self.timestamp(timestamp_days, snapshot.version)
        return snapshot.version

    def timestamp(self, days: float = EXPIRY_DAYS["timestamp"], snapshot_version: int | None = None) -> None:
        """A fresh timestamp (what a release machine re-signs on a schedule, e.g. hourly)."""
        try:
            old = self.load("timestamp").signed
            version, snap = old.version + 1, snapshot_version or old.snapshot_meta.version
        except ConfigError:
            version, snap = 1, snapshot_version or 1
        self._write("timestamp", Metadata(Timestamp(version=version, expires=_expires(days),
                                                    snapshot_meta=MetaFile(snap))))
