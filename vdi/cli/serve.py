"""`vdi broker`, `vdi gateway`, `vdi demo`: the long-running processes."""

from __future__ import annotations

import argparse
import sys

from vdi.config import Config, ConfigError


def cmd_broker(config: Config, args: argparse.Namespace) -> int:
    from broker.app import run

    try:
        run(config.broker_config())
    except ConfigError as exc:  # settings only the database can check (broker/pool_images.py)
        print(f"vdi: invalid configuration: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_gateway(config, args: argparse.Namespace) -> int:
    from gateway.app import run

    run(config)
    return 0


def cmd_demo(config: Config, args: argparse.Namespace) -> int:
    from vdi.demo import run_demo, stop_demo

    return stop_demo(config) if args.stop else run_demo(config, args.config)


def add_commands(sub) -> None:
    def add(name: str, fn, help_text: str, needs_config="full") -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn, needs_config=needs_config)
        return p

    add("broker", cmd_broker, "run the broker: portal, REST API, admin console and /metrics")
    # A gateway's file needs only [gateway] and [database] (gateway/config.py).
    add("gateway", cmd_gateway, "run the WebSocket-to-VNC console gateway", needs_config="gateway")
    demo = add(
        "demo",
        cmd_demo,
        "start the local lab, the broker and the gateway; a crashed broker or gateway is restarted with backoff; "
        "Ctrl-C or `vdi demo --stop` stops them all",
    )
    demo.add_argument("--stop", action="store_true", help="stop a demo started earlier")
