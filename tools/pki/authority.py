"""The fleet CA and what it issues, in one folder (``edgeloop pki``)::

    {dir}/ca.key (600)  ca.crt  inventory.json
    {dir}/server/server.{crt,key}                    the regional broker's TLS identity
    {dir}/devices/{device}/device.{crt,key} ca.crt bridge.conf   what goes into the device's /etc/edgeloop
    {dir}/services/{name}/client.{crt,key} ca.crt    receivers, responders, the operator's tools

A client certificate's common name is its MQTT identity, ``{name}@{fleet}``: Mosquitto's
``use_identity_as_username`` makes it the username the ACL speaks of, and ``@`` cannot occur in
a device or fleet name, so no device can be given a name that reads as another's. The inventory
lists every device with its groups and every service with its role; the ACL is made from it,
and a device removed from it (``pki revoke``) is left without any topic at the next reload.

Keys are ECDSA P-256 (every TLS stack a device might have speaks it), written mode 600 and never
overwritten.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgeloop.runtime.durable_file import replace_durably
from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.private_file import check_private_file
from edgeloop.sync.topics import check_name

ROLES = ("receiver", "responder", "operator")
BRIDGE_TEMPLATE = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto-bridge.conf"


def identity(name: str, fleet: str) -> str:
    return f"{name}@{fleet}"


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise ConfigError(f"pki: {path} exists", "a key is never overwritten: revoke it and issue another name") \
            from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


class Authority:
    """The CA in ``folder``; ``init`` makes it, ``issue_*`` make certificates signed by it."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.inventory_path = self.folder / "inventory.json"

    # -- the CA ------------------------------------------------------------------------

    def init(self, fleet: str, days: int = 3650) -> Path:
        check_name("--fleet", fleet)
        if (self.folder / "ca.key").exists():
            raise ConfigError(f"pki: {self.folder} holds a CA already", "give another --dir")
        self.folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"edgeloop fleet {fleet} CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                             crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        _write_key(self.folder / "ca.key", key)
        (self.folder / "ca.crt").write_bytes(_pem(cert))
        self._save({"fleet": fleet, "devices": {}, "services": {}})
        return self.folder / "ca.crt"

    def inventory(self) -> dict[str, Any]:
        try:
            inv = json.loads(self.inventory_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"pki: {self.folder} holds no CA", f"make one: edgeloop pki init --dir {self.folder}") \
                from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"pki: {self.inventory_path} is unreadable ({exc})", "restore it from a backup") \
                from exc
        if not isinstance(inv, dict) or not isinstance(inv.get("devices"), dict) or \
                not isinstance(inv.get("services"), dict):
            raise ConfigError(f"pki: {self.inventory_path} is not an inventory", "restore it from a backup")
        return inv

    def _save(self, inv: dict[str, Any]) -> None:
        replace_durably(self.inventory_path, json.dumps(inv, indent=1, sort_keys=True).encode())

    def _ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        check_private_file(self.folder / "ca.key", "pki ca.key")
        key = serialization.load_pem_private_key((self.folder / "ca.key").read_bytes(), password=None)
        return key, x509.load_pem_x509_certificate((self.folder / "ca.crt").read_bytes())  # type: ignore[return-value]

    def _issue(self, out: Path, stem: str, common_name: str, usage: Any, san: list[x509.GeneralName],
               days: int) -> Path:
        ca_key, ca_cert = self._ca()
        out.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        _write_key(out / f"{stem}.key", key)
        (out / f"{stem}.crt").write_bytes(_pem(builder.sign(ca_key, hashes.SHA256())))
        (out / "ca.crt").write_bytes(_pem(ca_cert))
        return out / f"{stem}.crt"

    # -- what it issues ----------------------------------------------------------------

    def issue_server(self, hosts: list[str], days: int = 825) -> Path:
        san: list[x509.GeneralName] = []
        for host in hosts:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                san.append(x509.DNSName(host))
        if not san:
            raise ConfigError("pki server: no --host", "give the broker's names and addresses, e.g. --host 127.0.0.1")
        return self._issue(self.folder / "server", "server", hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, san, days)

    def issue_device(self, device: str, groups: list[str], regional: str = "regional.example.net:8883",
                     days: int = 825) -> Path:
        inv = self.inventory()
        check_name("device", device)
        for g in groups:
            check_name("--group", g)
        if device in inv["devices"]:
            raise ConfigError(f"pki: device {device} has a certificate already",
                              f"revoke it first (edgeloop pki revoke {device}), or give another name")
        fleet = inv["fleet"]
        out = self.folder / "devices" / device
        cert = self._issue(out, "device", identity(device, fleet), ExtendedKeyUsageOID.CLIENT_AUTH, [], days)
        (out / "bridge.conf").write_text(bridge_conf(fleet, device, groups, regional))
        inv["devices"][device] = {"groups": sorted(set(groups)), "serial": self._serial(cert)}
        self._save(inv)
        return cert

    def issue_service(self, name: str, role: str, days: int = 825) -> Path:
        if role not in ROLES:
            raise ConfigError(f"pki service: role {role!r}", f"give one of {', '.join(ROLES)}")
        inv = self.inventory()
        check_name("service", name)
        if name in inv["services"] or name in inv["devices"]:
            raise ConfigError(f"pki: {name} has a certificate already", "give another name")
        cert = self._issue(self.folder / "services" / name, "client", identity(name, inv["fleet"]),
                           ExtendedKeyUsageOID.CLIENT_AUTH, [], days)
        inv["services"][name] = {"role": role, "serial": self._serial(cert)}
        self._save(inv)
        return cert

    def revoke(self, name: str) -> None:
        """Out of the inventory: the next ACL gives that identity no topic at all (its
        certificate still connects until it expires; the broker lets it do nothing)."""
        inv = self.inventory()
        if inv["devices"].pop(name, None) is None and inv["services"].pop(name, None) is None:
            raise ConfigError(f"pki revoke: {name} is not in the inventory", "see edgeloop pki list")
        inv.setdefault("revoked", []).append(name)
        self._save(inv)

    @staticmethod
    def _serial(cert_path: Path) -> str:
        return format(x509.load_pem_x509_certificate(cert_path.read_bytes()).serial_number, "x")


def bridge_conf(fleet: str, device: str, groups: list[str], regional: str) -> str:
    """The device-local Mosquitto's bridge (tools/deploy/mosquitto-bridge.conf) for this device
    alone: its own topics out, its own config, acks, requests and its groups' documents in."""
    text = BRIDGE_TEMPLATE.read_text().replace("regional.example.net:8883", regional)
    own = f"edgeloop/v1/{fleet}/{device}"
    text = text.replace("edgeloop/v1/{fleet}/{device}", own)
    group_lines = "".join(f"topic edgeloop/v1/{fleet}/group/{g}/config in 1\ntopic edgeloop/v1/{fleet}/group/{g}/rollout "
                          "in 1\n" for g in groups)
    return text.replace("# {groups}\n", group_lines)
