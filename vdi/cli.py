"""`vdi`: one command line for the broker, the gateway, the lab, the database and images."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable

from vdi.config import Config, ConfigError, load_config

DEFAULT_CONFIG = os.environ.get("VDI_CONFIG", "/etc/smartwork-vdi/vdi.toml")


def _setup_logging(config: Config | None) -> None:
    level = config.logging.level if config else "INFO"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic announces each of its plugins at INFO; the migrations it runs are what matters.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def cmd_broker(config: Config, args: argparse.Namespace) -> int:
    from broker.app import run

    try:
        run(config)
    except ConfigError as exc:  # settings only the database can check (broker/pool_images.py)
        print(f"vdi: invalid configuration: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_gateway(config: Config, args: argparse.Namespace) -> int:
    from gateway.app import run

    run(config)
    return 0


def cmd_demo(config: Config, args: argparse.Namespace) -> int:
    from vdi.demo import run_demo, stop_demo

    return stop_demo(config) if args.stop else run_demo(config, args.config)


def cmd_lab(config: Config, args: argparse.Namespace) -> int:
    from vdi.lab import Lab

    if args.action == "hosts" or args.hosts_action:
        from vdi.lab.hosts import hosts_command

        return hosts_command(config, args.action, args.hosts_action)
    lab = Lab(config)
    if args.action == "start":
        lab.start()
        print(lab.describe())
    elif args.action == "stop":
        lab.stop()
    else:
        print(lab.describe())
        return 0 if lab.healthy() else 3
    return 0


def cmd_db_upgrade(config: Config, args: argparse.Namespace) -> int:
    from broker.db.migrate import upgrade

    upgrade(config.database.url)
    print("database is at the latest revision")
    return 0


def cmd_image_build_demo(config: Config | None, args: argparse.Namespace) -> int:
    from images.config import ImageSettings
    from images.demo import build_demo_image

    settings = config.images if config else ImageSettings()
    image = build_demo_image(settings, force=args.force)
    print(f"demo image {image.version} in {image.directory}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdi", description="smartwork-vdi connection broker")
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="TOML configuration file (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable, help_text: str, needs_config: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(fn=fn, needs_config=needs_config)
        return p

    add("broker", cmd_broker, "run the broker: portal, REST API, admin console and /metrics")
    add("gateway", cmd_gateway, "run the WebSocket-to-VNC console gateway")
    demo = add("demo", cmd_demo, "start the local lab, the broker and the gateway; Ctrl-C stops them all")
    demo.add_argument("--stop", action="store_true", help="stop a demo started earlier")

    lab = add("lab", cmd_lab, "manage the local lab (slapd with the demo directory, libvirtd)")
    lab.add_argument("action", choices=["start", "stop", "status", "hosts"], help="what to do with the lab")
    lab.add_argument(
        "hosts_action",
        nargs="?",
        choices=["up", "down", "status"],
        help="with `hosts`: the multi-host lab of libvirt hosts hv1..hv3 in network namespaces (docs/lab.md)",
    )

    db = sub.add_parser("db", help="database maintenance", description="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser(
        "upgrade",
        help="migrate the database to the latest schema",
        description="migrate the database to the latest schema",
    )
    up.set_defaults(fn=cmd_db_upgrade, needs_config=True)

    image = sub.add_parser("image", help="golden images", description="golden images")
    image_sub = image.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    demo_image = image_sub.add_parser(
        "build-demo",
        help="build the demo desktop image unless cached",
        description="build the demo desktop image unless cached",
    )
    demo_image.add_argument("--force", action="store_true", help="rebuild even if a cached build exists")
    demo_image.set_defaults(fn=cmd_image_build_demo, needs_config=False)
    from images.cli import add_commands as add_image_commands

    add_image_commands(image_sub)
    from broker.inventory import add_host_commands
    from broker.rollout_cli import add_pool_commands
    from broker.totp_cli import add_totp_commands
    from vdi.bench import add_bench_commands

    add_host_commands(sub)
    add_pool_commands(sub)
    add_totp_commands(sub)
    add_bench_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = None
    if args.needs_config or os.path.exists(args.config):
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"vdi: invalid configuration: {exc}", file=sys.stderr)
            return 2
    _setup_logging(config)
    try:
        return args.fn(config, args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
