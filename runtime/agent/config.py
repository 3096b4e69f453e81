"""The agent's configuration: one TOML file (or the embedded demo) plus ``EDGELOOP_*``
environment overrides, validated with messages that name the key and the fix.

```toml
device = "gw-1"
fleet = "demo"
data_dir = "~/.local/share/edgeloop"
broker = ""                        # HOST[:PORT]; empty: records wait in the outbox
status_every_s = 5.0
metrics_port = 9464                # Prometheus on 127.0.0.1 (0: a free port, -1: off)
device_power_w = 5.0               # energy per inference when RAPL cannot be read
price_per_kwh = 0.30
sync_nice = 10                     # the sync worker (outbox drain, index writes) yields the CPU to inference
drain_per_s = 50000.0              # at most this many records/s when catching up (0: no cap)
answer_requests = true             # with a broker: answer MQTT 5 requests on edgeloop/v1/{fleet}/{device}/req/infer

[camera]                           # an image folder replayed as a camera
folder = ""                        # empty: the bundled digit samples
device = ""                        # /dev/video0: a V4L2 camera through OpenCV (the `camera` extra) instead
fps = 5.0
model = "digits"
fallback = "digits_small"          # the smaller model the ladder steps down to ("" for none)
deadline_ms = 100.0
alert_labels = ["7"]               # an event for these labels (threshold: min_score)
min_score = 0.5
index_every = 25                   # every n-th frame (and each alert) into the local retrieval index

[mcu]                              # the simulated MCU on a pty (or a real port: url)
enabled = true
url = ""                           # empty: start the simulator
rate_hz = 50.0
model = "vibration"                # classifies each window (fallback: vibration_small); "" = peak rule
min_score = 0.6                    # a fault class this confident stops the motor
peak_threshold = 8000              # the rule without a model: a peak above this stops the motor
anomaly_every_s = 5.0              # the simulator knocks now and then (demo; 0: never)
```
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from edgeloop.runtime.errors import ConfigError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]


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
class AgentConfig:
    device: str = "gw-1"
    fleet: str = "demo"
    data_dir: str = "~/.local/share/edgeloop"
    broker: str = ""
    status_every_s: float = 5.0
    group: str = ""  # the fleet group whose desired config applies (besides the device's own)
    metrics_port: float = 9464.0  # Prometheus on 127.0.0.1; 0: any free port; -1: off
    device_power_w: float = 5.0  # for energy per inference where RAPL is not readable
    price_per_kwh: float = 0.30  # for the cost per million inferences
    sync_nice: int = 10  # niceness added to the sync worker (outbox drain, index writes): inference first
    answer_requests: bool = True  # answer inference requests on edgeloop/v1/{fleet}/{device}/req/infer
    drain_per_s: float = 50_000.0  # records/s the outbox drains at most (0: no cap); catch-up leaves CPU to inference
    camera: CameraConfig = field(default_factory=CameraConfig)
    mcu: McuConfig = field(default_factory=McuConfig)

    @property
    def data_path(self) -> Path:
        return Path(os.path.expanduser(self.data_dir))


ENV = {"EDGELOOP_DEVICE": "device", "EDGELOOP_FLEET": "fleet", "EDGELOOP_DATA_DIR": "data_dir",
       "EDGELOOP_BROKER": "broker", "EDGELOOP_STATUS_EVERY_S": "status_every_s", "EDGELOOP_GROUP": "group",
       "EDGELOOP_METRICS_PORT": "metrics_port"}


def _typed(cls: type, table: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"{where}{key}: unknown key", f"use one of: {', '.join(known)}")
        default = getattr(cls(), key)
        if isinstance(default, (CameraConfig, McuConfig)):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}{key}: must be a table", f"write [{key}]")
            values[key] = _typed(type(default), value, f"{key}.")
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, tuple):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ConfigError(f"{where}{key}: {value!r} is not a {type(default).__name__}",
                              f"write {key} = {default!r} or similar")
        values[key] = value
    config = cls(**values)
    if getattr(config, "anomaly_every_s", 0) < 0:
        raise ConfigError(f"{where}anomaly_every_s: must not be negative", "give 0 for none")
    for key in ("index_every", "sync_nice", "drain_per_s"):
        if getattr(config, key, 0) < 0:
            raise ConfigError(f"{where}{key}: must not be negative", "give 0 or more")
    for key in ("fps", "rate_hz", "status_every_s", "deadline_ms"):
        if hasattr(config, key) and getattr(config, key) <= 0:
            raise ConfigError(f"{where}{key}: must be above 0", f"give {key} a positive number")
    return config


def with_overrides(config: AgentConfig, table: Mapping[str, Any]) -> AgentConfig:
    """``config`` with the keys of ``table`` (a partial config, e.g. from MQTT) over it,
    validated the same way as a file."""
    from dataclasses import asdict

    from .remote_config import merge

    base = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}
    for section in ("camera", "mcu"):
        base[section] = {k: (list(v) if isinstance(v, tuple) else v) for k, v in base[section].items()}
    return _typed(AgentConfig, merge(base, dict(table)), "")


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """The file (or the embedded demo defaults), then the environment over it."""
    table: dict[str, Any] = {}
    if path is not None:
        try:
            table = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"--config: cannot read {path}: {exc}", "give the path of a TOML file") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"--config: {path} is not valid TOML: {exc}", "fix the file") from exc
    config = _typed(AgentConfig, table, "")
    env = os.environ if environ is None else environ
    overrides: dict[str, Any] = {}
    for var, key in ENV.items():
        if var in env:
            if key in ("status_every_s", "metrics_port"):
                try:
                    overrides[key] = float(env[var])
                except ValueError as exc:
                    raise ConfigError(f"{var}: '{env[var]}' is not a number", "give seconds, e.g. 5") from exc
            else:
                overrides[key] = env[var]
    return replace(config, **overrides)
