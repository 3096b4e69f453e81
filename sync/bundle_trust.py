"""The device's side of TUF: which bundles the fleet operator signed, and their files fetched
and verified against that metadata.

python-tuf's ngclient does the metadata (root rotation, timestamp, snapshot, the group's
delegated role; rollback, freeze and mix-and-match detection) and keeps the trusted copies in
``metadata_dir`` across restarts; the bundle files come through our resumable ``Fetcher``,
checked against the length and sha256 TUF signed. Every refusal is a ``TrustError`` whose
``kind`` says which attack (or fault) it looks like; the caller keeps serving what it has.

A Pi has no real-time clock: until the clock is past ``clock_floor`` (the newest time this
device has trusted, and never before the release of this code), nothing is installed,
because expired metadata cannot be told from fresh with a clock in 1970.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from edgeloop.runtime.errors import EdgeloopError

from edgeloop.models.store import sha256_of

from .bundle import BundleSpec, parse_bundle
from .fetch import Fetcher, FetchError, Progress

log = logging.getLogger("edgeloop.rollout")

CLOCK_FLOOR = 1_793_491_200.0  # 2026-11-01 UTC: no device running this code can honestly be earlier


class TrustError(EdgeloopError):
    """Signed metadata or a file was refused. ``kind``: rollback, freeze, mix-and-match,
    bad signature, wrong hash, not signed, unreachable, clock, invalid, disk (the device's own
    copies cannot be written)."""

    def __init__(self, problem: str, fix: str | None, kind: str) -> None:
        super().__init__(problem, fix)
        self.kind = kind


@dataclass(frozen=True)
class FetchedBundle:
    spec: BundleSpec
    folder: Path
    sha256: str  # of bundle.toml: the bundle's identity (a version re-released with other files differs)
    targets_version: int  # of the group's signed role


def _classify(exc: Exception) -> str:
    text = str(exc)
    if isinstance(exc, tuf_errors.ExpiredMetadataError):
        return "freeze"
    if isinstance(exc, tuf_errors.BadVersionNumberError):
        return "mix-and-match" if text.startswith("Expected") else "rollback"
    if isinstance(exc, tuf_errors.LengthOrHashMismatchError):
        return "mix-and-match"
    if isinstance(exc, tuf_errors.UnsignedMetadataError):
        return "bad signature"
    if isinstance(exc, tuf_errors.DownloadError):
        return "unreachable"
    return "invalid"


FIXES = {
    "freeze": "the repository's metadata has expired (or this clock runs ahead): the release machine must "
              "sign a new timestamp",
    "rollback": "the server offers older metadata than this device trusts: a replayed or stale mirror",
    "mix-and-match": "the metadata files do not belong together: a stale or tampered mirror",
    "bad signature": "the metadata is not signed by the keys this device trusts",
    "unreachable": "the repository is not reachable; tried again later",
    "invalid": "the repository's metadata is malformed",
}


class BundleTrust:
    def __init__(self, metadata_dir: Path, repo_url: str, root: Path, clock: Callable[[], float] = time.time,
                 clock_floor: float = CLOCK_FLOOR) -> None:
        self.metadata_dir = Path(metadata_dir)
        self.repo_url = repo_url.rstrip("/")
        self.root = Path(root)
        self.clock = clock
        self.clock_floor = clock_floor
        self._updater: Updater | None = None

    def clock_problem(self) -> str | None:
        """Why this clock cannot be trusted for an install now (None: it can)."""
        now = self.clock()
        if now < self.clock_floor:
            return (f"the clock reads {time.strftime('%Y-%m-%d %H:%M', time.gmtime(now))} UTC, before "
                    f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(self.clock_floor))}, the latest time this "
                    "device has trusted")
        return None

    def refresh(self) -> Updater:
        """Fresh top-level metadata (a new Updater each time: ngclient refreshes once per instance)."""
        problem = self.clock_problem()
        if problem is not None:
            raise TrustError(f"rollout: {problem}", "installs wait for NTP (or another time source); "
                             "serving goes on", kind="clock")
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        cached = self.metadata_dir / "root.json"
        try:
            bootstrap = None if cached.exists() else self.root.read_bytes()
        except OSError as exc:
            raise TrustError(f"rollout: the trusted root cannot be read: {exc}",
                             f"ship the fleet's root.json in the image at {self.root}", kind="invalid") from None
        try:
            updater = Updater(str(self.metadata_dir), f"{self.repo_url}/metadata/", None,
                              f"{self.repo_url}/targets/", config=UpdaterConfig(max_root_rotations=32),
                              bootstrap=bootstrap)
            updater.refresh()
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            kind = _classify(exc)
            raise TrustError(f"rollout: TUF metadata refused ({kind}): {exc}", FIXES[kind], kind) from None
        except OSError as exc:  # the trusted copies are written on every refresh
            raise TrustError(f"rollout: the trusted metadata in {self.metadata_dir} cannot be kept: {exc}",
                             "make room on the data disk; tried again later", kind="disk") from None
        self._updater = updater
        self.clock_floor = max(self.clock_floor, self.clock())  # trusted now: never earlier again
        return updater

    def target(self, path: str) -> TargetFile:
        updater = self._updater or self.refresh()
        try:
            info = updater.get_targetinfo(path)
        except (tuf_errors.RepositoryError, tuf_errors.DownloadError) as exc:
            kind = _classify(exc)
            raise TrustError(f"rollout: TUF metadata for {path} refused ({kind}): {exc}", FIXES[kind], kind) from None
        except OSError as exc:  # the group's role is kept beside the top-level metadata
            raise TrustError(f"rollout: the trusted metadata in {self.metadata_dir} cannot be kept: {exc}",
                             "make room on the data disk; tried again later", kind="disk") from None
        if info is None:
            raise TrustError(f"rollout: {path} is not among the signed targets",
                             "release it with `edgeloop release add`, or fix the rollout's version", kind="not signed")
        return info

    def url(self, info: TargetFile) -> str:
        folder, _, name = info.path.rpartition("/")
        return f"{self.repo_url}/targets/{folder}/{info.hashes['sha256']}.{name}"

    def targets_version(self, group: str) -> int:
        updater = self._updater or self.refresh()
        role = updater._trusted_set.get(group)  # noqa: SLF001 (ngclient has no public getter for a role)
        return role.version if role is not None else 0

    def fetch_bundle(self, group: str, model: str, version: str, folder: Path, fetcher: Fetcher,
                     progress: Progress | None = None) -> FetchedBundle:
        """Every file of the bundle into ``folder``, each verified; the parsed description."""
        prefix = f"{group}/{model}/{version}"
        self.refresh()
        folder.mkdir(parents=True, exist_ok=True)
        head = self.target(f"{prefix}/bundle.toml")
        spec_path = self._fetch(head, folder / "bundle.toml", fetcher, progress)
        spec = parse_bundle(spec_path.read_bytes())
        if spec.model != model or spec.version != version:
            raise TrustError(f"rollout: {prefix}/bundle.toml describes {spec.model} {spec.version}",
                             "the release is inconsistent; fix it", kind="invalid")
        infos = {name: self.target(f"{prefix}/{name}") for name in spec.files}
        if progress is not None:
            progress.length = head.length + sum(i.length for i in infos.values())
        for name, info in infos.items():
            self._fetch(info, folder / name, fetcher, progress)
        return FetchedBundle(spec, folder, head.hashes["sha256"], self.targets_version(group))

    def _fetch(self, info: TargetFile, dest: Path, fetcher: Fetcher, progress: Progress | None) -> Path:
        sha = info.hashes.get("sha256")
        if sha is None:
            raise TrustError(f"rollout: {info.path} is signed without a sha256", "release it again", kind="invalid")
        if not (dest.exists() and dest.stat().st_size == info.length and sha256_of(dest) == sha):
            part = Progress(info.length)  # this file's; the bundle's sums them
            try:
                fetcher.fetch(self.url(info), dest, info.length, sha, part)
            except FetchError as exc:
                if exc.reason == "hash mismatch":
                    raise TrustError(f"rollout: {info.path}: {exc.problem}", exc.fix, kind="wrong hash") from None
                raise
            finally:
                if progress is not None:
                    progress.fetched += part.fetched
                    progress.attempts += part.attempts
                    progress.rate_bps = part.rate_bps or progress.rate_bps
        if progress is not None:
            progress.have += info.length
        return dest
