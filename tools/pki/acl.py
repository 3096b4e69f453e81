"""The regional broker's ACL, made from the PKI inventory (``edgeloop regional acl``).

Every client connects with a certificate whose common name Mosquitto takes as its username
(``use_identity_as_username``); an identity not in the inventory gets no line and so no topic.
Per fleet ``f``, with ``P = edgeloop/v1/f``:

- a device ``d``: writes only its own ``P/d/{data/#, status, state, state/#, event, event/#,
  req, res/#}``; reads only its own ``P/d/{config, ack, req/infer, res}`` and its groups'
  ``P/group/{g}/{config, rollout}``. It cannot write its own config or acks (a forged ack
  would delete records the store never committed), nor anything of another device.
- a receiver: reads ``P/+/data/#`` and the statuses, writes ``P/+/ack``.
- a responder: reads ``P/+/req``, writes ``P/+/res`` (a device's offload answers).
- an operator (``edgeloop fleet``, the controller): writes the desired documents and the
  devices' ``req/infer``; reads the reported state, the statuses and the answers ``P/+/res/#``.

Mosquitto applies ``read`` to subscriptions and deliveries alike, so a subscription to ``#`` is
granted but nothing outside the lines is ever delivered on it.
"""

from __future__ import annotations

from typing import Any

from .authority import identity

DEVICE_WRITE = ("data/#", "status", "state", "state/#", "event", "event/#", "req", "res/#")
DEVICE_READ = ("config", "ack", "req/infer", "res")
ROLE_LINES = {
    "receiver": (("read", "{p}/+/data/#"), ("read", "edgeloop/v1/+/+/status"), ("write", "{p}/+/ack")),
    "responder": (("read", "{p}/+/req"), ("write", "{p}/+/res")),
    "operator": (("write", "{p}/+/config"), ("write", "{p}/group/+/config"), ("write", "{p}/group/+/rollout"),
                 ("write", "{p}/+/req/infer"), ("read", "{p}/+/state"), ("read", "{p}/+/state/#"),
                 ("read", "{p}/+/status"), ("read", "{p}/+/config"), ("read", "{p}/group/+/#"),
                 ("read", "{p}/+/res/#")),
}


def acl_text(inventory: dict[str, Any]) -> str:
    fleet = inventory["fleet"]
    p = f"edgeloop/v1/{fleet}"
    out = [f"# made by `edgeloop regional acl` from the PKI inventory of fleet {fleet}; anonymous clients get nothing",
           ""]
    for device, info in sorted(inventory["devices"].items()):
        out.append(f"user {identity(device, fleet)}")
        out += [f"topic write {p}/{device}/{t}" for t in DEVICE_WRITE]
        out += [f"topic read {p}/{device}/{t}" for t in DEVICE_READ]
        for g in info.get("groups", []):
            out += [f"topic read {p}/group/{g}/config", f"topic read {p}/group/{g}/rollout"]
        out.append("")
    for name, info in sorted(inventory["services"].items()):
        out.append(f"user {identity(name, fleet)}")
        out += [f"topic {mode} {t.format(p=p)}" for mode, t in ROLE_LINES[info["role"]]]
        out.append("")
    return "\n".join(out)


def listener_conf(port: int, pki: str, acl_file: str, bind: str = "") -> str:
    """The regional Mosquitto's TLS listener for this ACL: a client certificate from the fleet
    CA required, its common name the username."""
    return (f"listener {port}{' ' + bind if bind else ''}\n"
            f"cafile {pki}/ca.crt\ncertfile {pki}/server/server.crt\nkeyfile {pki}/server/server.key\n"
            "require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n"
            f"acl_file {acl_file}\n")
