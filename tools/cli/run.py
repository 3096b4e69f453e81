"""``edgeloop run``: the device agent. With no config it runs the embedded demo: the bundled
digit samples replayed as a camera through the demo model, a simulated MCU on a pty through
the firmware bridge, records kept in a local outbox (no broker needed).

The file, ``EDGELOOP_*`` and these flags are validated together, before anything starts."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any


def register(sub: Any, common: Any) -> None:
    p = sub.add_parser("run", help="run the device agent (the embedded demo without --config)")
    p.add_argument("--config", type=Path, help="the agent's TOML file (default: the embedded demo)")
    p.add_argument("--broker", help="HOST[:PORT] to drain the outbox to [EDGELOOP_BROKER]")
    p.add_argument("--device", help="this device's name, one topic level [EDGELOOP_DEVICE]")
    p.add_argument("--fleet", help="the fleet's name, one topic level (default demo) [EDGELOOP_FLEET]")
    p.add_argument("--data-dir", help="where the outbox and state live [EDGELOOP_DATA_DIR]")
    p.add_argument("--duration", type=float, help="stop after this many seconds (default: until a signal)")
    p.add_argument("--status-every", type=float, help="seconds between status lines (default 5) [EDGELOOP_STATUS_EVERY_S]")
    p.add_argument("--metrics-port", type=int, help="Prometheus and /status on 127.0.0.1 (0: a free port, -1: off) "
                   "[EDGELOOP_METRICS_PORT]")
    common(p)
    p.set_defaults(handler=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from edgeloop.runtime import logs
    from edgeloop.runtime.agent import Agent, load_config
    from edgeloop.runtime.agent.agent import inference_threads
    from edgeloop.runtime.errors import ConfigError

    from .common import engine_from_args

    if args.duration is not None and not 0 < args.duration < 1e9:
        raise ConfigError(f"--duration: {args.duration} is not a positive number of seconds", "give e.g. 20")
    config = load_config(args.config, flags={"broker": args.broker, "device": args.device, "fleet": args.fleet,
                                             "data_dir": args.data_dir, "status_every_s": args.status_every,
                                             "metrics_port": args.metrics_port})
    if args.threads is None and "EDGELOOP_NUM_THREADS" not in os.environ:
        args.threads = inference_threads()
    engine = engine_from_args(args)
    agent = Agent(config, engine)
    signals = [0]

    def on_signal(signum: int, frame: Any) -> None:
        signals[0] += 1
        if signals[0] > 1:  # a second signal: out at once; SQLite's journal keeps the files whole
            os._exit(128 + signum)
        agent.stopping.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    logs.say(f"edgeloop: agent '{config.device}' (fleet {config.fleet}) starting; data in {config.data_path}"
             + (f", draining to {config.broker}" if config.broker else ", no broker: records wait in the outbox"))
    try:
        agent.run(args.duration)
    finally:
        engine.close()
    s = agent.final
    logs.say(f"edgeloop: stopped after {s.get('inferences', 0)} inferences; outbox holds {s.get('outbox_rows', '?')} "
             "records", inferences=s.get("inferences", 0), outbox_rows=s.get("outbox_rows"))
    return 0
