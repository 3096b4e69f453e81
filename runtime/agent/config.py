"""The agent's configuration: one TOML file (or the embedded demo), ``EDGELOOP_*`` environment
overrides, command-line flags and desired documents over MQTT, all through one function,
``validate``: types, finite numbers, ranges and topic-safe names, with messages that name the
key, where it came from and the fix. What needs the device (models registered, folders with
images) is checked by ``check_resources`` before anything starts or changes.

```toml
device = "gw-1"                    # one MQTT topic level: letters, digits, . _ -
fleet = "demo"
group = ""                         # the fleet group whose desired config applies too
data_dir = "~/.local/share/edgeloop"
broker = ""                        # HOST[:PORT] or a cluster's nodes, comma-separated; empty: records wait
status_every_s = 5.0               # a status line this often (0.1 .. 86400)
metrics_port = 9464                # Prometheus on 127.0.0.1 (0: a free port, -1: off)
device_power_w = 5.0               # energy per inference when RAPL cannot be read
price_per_kwh = 0.30
sync_nice = 10                     # the sync worker (outbox drain, index writes) yields the CPU to inference
drain_per_s = 50000.0              # at most this many records/s when catching up (0: no cap)
answer_requests = true             # with a broker: answer MQTT 5 requests on edgeloop/v1/{fleet}/{device}/req/infer
index_share_every_s = 0.0          # with a broker: the local index's ids and vectors go up to the regional index this often (0: never)
index_share_labels = false         # and their labels

[mqtt]                             # how every MQTT part reaches the broker
protocol = "5"                     # or "3.1.1" (a broker that refuses 5 gets 3.1.1 anyway)
ca_file = ""                       # TLS when set; cert_file + key_file for mutual TLS
cert_file = ""
key_file = ""
username = ""
password_file = ""                 # a file holding the password

[camera]                           # an image folder replayed as a camera
folder = ""                        # empty: the bundled digit samples
device = ""                        # /dev/video0: a V4L2 camera through OpenCV (the `camera` extra) instead
fps = 5.0                          # 0.01 .. 1e6
model = "digits"
fallback = "digits_small"          # the smaller model the ladder steps down to ("" for none)
deadline_ms = 100.0
alert_labels = ["7"]               # an event for these labels (threshold: min_score)
min_score = 0.5
hard_below = 0.6                   # less confident than this: a hard example
upload_raw = false                 # hard examples carry the raw image only when this allows
index_every = 25                   # every n-th frame (and each alert) into the local retrieval index
canary = ""                        # a second model for a share of the frames (canary_share, 0..1)
canary_share = 0.0
shadow = ""                        # a model that sees a sample of frames off the hot path, never answering
shadow_share = 0.0

[rollout]                          # signed model bundles (TUF) for the camera's model; needs broker and group
repo_url = ""                      # the fleet's repository, e.g. https://releases.example/fleet (empty: off)
root = ""                          # the fleet's root.json shipped in the image
retry_s = 60.0                     # refused or unreachable metadata: asked again this much later

[mcu]                              # the simulated MCU on a pty (or a real port: url)
enabled = true
url = ""                           # empty: start the simulator
rate_hz = 50.0
model = "vibration"                # classifies each window (fallback: vibration_small); "" = peak rule
fallback = "vibration_small"
min_score = 0.6                    # a fault class this confident stops the motor
peak_threshold = 8000              # the rule without a model: a peak above this stops the motor
anomaly_every_s = 5.0              # the simulator knocks now and then (demo; 0: never)
```
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from edgeloop.runtime.errors import ConfigError
from edgeloop.sync.topics import DEFAULT_FLEET, check_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


@dataclass(frozen=True)
class MqttConfig:
    protocol: str = "5"
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password_file: str = ""
    # The fleet operator's ed25519 public keys (PEM files from `edgeloop fleet keygen`): when set,
    # desired config and rollout documents are taken only signed by one of them, newest first.
    operator_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class CameraConfig:
    folder: str = ""
    device: str = ""  # a V4L2 camera (/dev/video0, or 0) through OpenCV instead of the folder
    fps: float = 5.0
    model: str = "digits"
    fallback: str = "digits_small"  # the ladder's next rung when the model hangs, fails or is slow ("" for none)
    deadline_ms: float = 100.0
    alert_labels: tuple[str, ...] = ("7",)
    min_score: float = 0.5
    hard_below: float = 0.6  # an inference less confident than this is a hard example
    upload_raw: bool = False  # hard examples carry the raw image only when this allows it
    index_every: int = 25  # every n-th frame's embedding (and every alert's) into the local index; 0: none
    canary: str = ""  # a model that answers canary_share of the frames (stable by frame key)
    canary_share: float = 0.0
    shadow: str = ""  # a model that sees shadow_share of the frames off the hot path; never answers
    shadow_share: float = 0.0


@dataclass(frozen=True)
class McuConfig:
    enabled: bool = True
    url: str = ""
    rate_hz: float = 50.0
    peak_threshold: float = 8000.0  # the rule when no model is configured
    model: str = "vibration"  # classifies each window ("" for the peak rule); vibration_small is its fallback
    fallback: str = "vibration_small"
    min_score: float = 0.6  # a fault class at least this confident stops the motor
    anomaly_every_s: float = 5.0  # the simulator's demo knocks (0: none); ignored with a real port


@dataclass(frozen=True)
class RolloutConfig:
    repo_url: str = ""  # the fleet's TUF repository (a static HTTP server); empty: no rollouts
    root: str = ""  # the fleet's root.json, shipped in the device image
    retry_s: float = 60.0  # refused or unreachable metadata is asked for again this much later


@dataclass(frozen=True)
class AgentConfig:
    device: str = "gw-1"
    fleet: str = DEFAULT_FLEET
    data_dir: str = "~/.local/share/edgeloop"
    broker: str = ""
    status_every_s: float = 5.0
    group: str = ""  # the fleet group whose desired config applies (besides the device's own)
    metrics_port: int = 9464  # Prometheus on 127.0.0.1; 0: any free port; -1: off
    device_power_w: float = 5.0  # for energy per inference where RAPL is not readable
    price_per_kwh: float = 0.30  # for the cost per million inferences
    sync_nice: int = 10  # niceness added to the sync worker (outbox drain, index writes): inference first
    answer_requests: bool = True  # answer inference requests on edgeloop/v1/{fleet}/{device}/req/infer
    requests_per_s: float = 20.0  # answered per requester (its response topic), bursts of twice that
    requests_total_per_s: float = 50.0  # answered in all; the rest are counted and dropped
    drain_per_s: float = 50_000.0  # records/s the outbox drains at most (0: no cap); catch-up leaves CPU to inference
    # The regional index gets the local index's changes this often (0: never; off by default: an
    # embedding says something about its image, so it leaves the device only when asked to).
    index_share_every_s: float = 0.0
    index_share_labels: bool = False  # labels go up too (ids and vectors always)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    camera: CameraConfig = field(default_factory=CameraConfig)
    mcu: McuConfig = field(default_factory=McuConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))

    def table(self) -> dict[str, Any]:
        """The config as a plain table (lists for tuples), as a file or document would hold it."""
        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return list(value) if isinstance(value, tuple) else value
        return plain(asdict(self))


SECTIONS = {"mqtt": MqttConfig, "camera": CameraConfig, "mcu": McuConfig, "rollout": RolloutConfig}

# Inclusive ranges of the numbers; every number must also be finite.
RANGES: dict[str, tuple[float, float]] = {
    "status_every_s": (0.1, 86_400.0), "metrics_port": (-1, 65_535), "device_power_w": (0.001, 10_000.0),
    "price_per_kwh": (0.0, 1_000.0), "sync_nice": (0, 19), "drain_per_s": (0.0, 10_000_000.0),
    "index_share_every_s": (0.0, 86_400.0), "requests_per_s": (0.1, 100_000.0),
    "requests_total_per_s": (0.1, 100_000.0),
    "camera.fps": (0.01, 1e6), "camera.deadline_ms": (0.1, 60_000.0), "camera.min_score": (0.0, 1.0),
    "camera.hard_below": (0.0, 1.0), "camera.index_every": (0, 1_000_000), "camera.canary_share": (0.0, 1.0),
    "camera.shadow_share": (0.0, 1.0), "mcu.rate_hz": (0.1, 10_000.0), "mcu.min_score": (0.0, 1.0),
    "mcu.peak_threshold": (0.0, 1e9), "mcu.anomaly_every_s": (0.0, 86_400.0), "rollout.retry_s": (1.0, 86_400.0),
}
NAMES = ("device", "fleet")  # one topic level each; group too when set
CHOICES = {"mqtt.protocol": ("5", "3.1.1")}

ENV = {"EDGELOOP_DEVICE": "device", "EDGELOOP_FLEET": "fleet", "EDGELOOP_DATA_DIR": "data_dir",
       "EDGELOOP_BROKER": "broker", "EDGELOOP_STATUS_EVERY_S": "status_every_s", "EDGELOOP_GROUP": "group",
       "EDGELOOP_METRICS_PORT": "metrics_port"}


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``, tables merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) \
            else value
    return out


def _origin(origins: Mapping[str, str], key: str) -> str:
    where = origins.get(key) or origins.get(key.split(".")[0])
    return f" (from {where})" if where else ""


def _typed_value(key: str, value: Any, default: Any, origins: Mapping[str, str]) -> Any:
    bad = ConfigError(f"{key}: {value!r} is not a {type(default).__name__}{_origin(origins, key)}",
                      f"write {key.split('.')[-1]} = {default!r} or similar")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise bad
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{key}: {value!r} is not a finite number{_origin(origins, key)}",
                              f"give {key} a number within {RANGES.get(key, ('any', 'finite'))}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: {value!r} is not a list of strings{_origin(origins, key)}",
                              f"write {key.split('.')[-1]} = [\"7\"] or similar")
        return tuple(value)
    if not isinstance(value, str):
        raise bad
    return value


def _section(cls: type, table: Mapping[str, Any], prefix: str, origins: Mapping[str, str]) -> Any:
    known = {f.name: f for f in fields(cls)}
    defaults = cls()
    values: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(f"{name}: unknown key{_origin(origins, name)}", f"use one of: {', '.join(known)}")
        default = getattr(defaults, key)
        if key in SECTIONS and not prefix:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{name}: must be a table{_origin(origins, name)}", f"write [{key}]")
            values[key] = _section(SECTIONS[key], value, f"{key}.", origins)
            continue
        value = _typed_value(name, value, default, origins)
        if name in RANGES:
            lo, hi = RANGES[name]
            if not lo <= value <= hi:
                raise ConfigError(f"{name}: {value!r} is not within {lo:g}..{hi:g}{_origin(origins, name)}",
                                  f"give {name} a value from {lo:g} to {hi:g}")
        if name in CHOICES and value not in CHOICES[name]:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(CHOICES[name])}{_origin(origins, name)}",
                              f"write {key} = \"{CHOICES[name][0]}\"")
        values[key] = value
    return cls(**values)


def validate(table: Mapping[str, Any], origins: Mapping[str, str] | None = None) -> AgentConfig:
    """A whole config from a table (the file's, with environment, flags and desired documents
    merged over it); ConfigError names the first bad key, where it came from and the fix.
    ``origins`` maps a key (or section) to where its value came from."""
    origins = origins or {}
    config: AgentConfig = _section(AgentConfig, table, "", origins)
    for key in NAMES:
        check_name(key + _origin(origins, key), getattr(config, key))
    if config.group:
        check_name("group" + _origin(origins, "group"), config.group)
    if config.broker:
        from edgeloop.sync.mqtt_client import parse_broker

        parse_broker(config.broker, "broker" + _origin(origins, "broker"))
    if not config.data_dir:
        raise ConfigError("data_dir: empty", "give the folder where the outbox and state live")
    cam = config.camera
    for key, model in (("canary", cam.canary), ("shadow", cam.shadow)):
        if model and model == cam.model:
            raise ConfigError(f"camera.{key}: '{model}' is the camera's model already", 'name another model or ""')
    return config


def check_resources(config: AgentConfig, store: Any) -> None:
    """What the device must have for ``config``: its models registered (or files), its camera
    folder holding images. ConfigError before anything starts or is replaced."""
    from edgeloop.runtime.errors import EdgeloopError

    cam, mcu = config.camera, config.mcu
    wanted = [("camera.model", cam.model), ("camera.fallback", cam.fallback), ("camera.canary", cam.canary),
              ("camera.shadow", cam.shadow)]
    if mcu.enabled:
        wanted += [("mcu.model", mcu.model), ("mcu.fallback", mcu.fallback)]
    for key, name in wanted:
        if name:
            try:
                store.resolve(name)
            except EdgeloopError as exc:
                raise ConfigError(f"{key}: {exc.problem}", exc.fix) from exc
    if not cam.model:
        raise ConfigError("camera.model: empty", "name the camera's model (edgeloop models list)")
    if cam.folder and not cam.device:
        from .sources.folder import list_images

        list_images(Path(cam.folder).expanduser())  # raises when missing or empty
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        path = getattr(config.mqtt, key)
        if path and not Path(path).expanduser().is_file():
            raise ConfigError(f"mqtt.{key}: {path} does not exist", "give the path of a readable file")
    r = config.rollout
    if r.repo_url:
        if not r.repo_url.startswith(("http://", "https://")):
            raise ConfigError(f"rollout.repo_url: {r.repo_url!r} is not an http(s) URL",
                              "give the URL the fleet's TUF repository is served at")
        if not r.root or not Path(r.root).expanduser().is_file():
            raise ConfigError(f"rollout.root: {r.root or '(empty)'} is not a file",
                              "give the fleet's root.json, as shipped in the device image")
        if not config.group:
            raise ConfigError("rollout.repo_url is set but group is empty",
                              "give the fleet group whose rollouts this device follows")
    if bool(config.mqtt.cert_file) != bool(config.mqtt.key_file):
        raise ConfigError("mqtt: cert_file and key_file go together", "give both for mutual TLS, or neither")


def _from_text(var: str, key: str, text: str) -> Any:
    """An environment value typed by its key's default."""
    default = getattr(AgentConfig(), key)
    if isinstance(default, bool):
        return text.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(default, (int, float)):
        try:
            number = float(text)
        except ValueError as exc:
            raise ConfigError(f"{var}: '{text}' is not a number", f"give a number, e.g. {default}") from exc
        return int(number) if isinstance(default, int) and number.is_integer() else number
    return text


def read_file(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        return tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc}", "give the path of a TOML file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}", "fix the file") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"--config: {path} is not UTF-8 text", "save it as UTF-8") from exc


def load_table(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
               flags: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """The merged table (file, then environment, then flags) and where each key came from."""
    table = read_file(path)
    origins = {key: f"--config {path}" for key in table} if path is not None else {}
    env = os.environ if environ is None else environ
    for var, key in ENV.items():
        if var in env:
            table[key] = _from_text(var, key, env[var])
            origins[key] = var
    for key, value in (flags or {}).items():
        if value is not None:
            table[key] = value
            origins[key] = "--" + key.removesuffix("_s").replace("_", "-")
    return table, origins


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None) -> AgentConfig:
    """The file (or the embedded demo defaults), the environment and the flags over it, validated."""
    table, origins = load_table(path, environ, flags)
    return validate(table, origins)


def with_overrides(config: AgentConfig, table: Mapping[str, Any], where: str = "MQTT") -> AgentConfig:
    """``config`` with the keys of ``table`` (a partial config, e.g. a desired document) over it,
    validated the same way as a file."""
    return validate(merge(config.table(), table), {key: where for key in table})
