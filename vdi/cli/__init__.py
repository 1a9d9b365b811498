"""`vdi`: one command line for the broker, the gateway, the lab, the database and images.

One module per command group (vdi/cli/*.py), each with `add_commands(sub)`; a command's
`needs_config` says which part of the configuration file it reads: "full" (the whole file),
"gateway" (only [gateway] and [database]), or "optional" (the file if it exists).
"""

from __future__ import annotations

import argparse
import os
import sys

from broker.db import DatabaseStartError
from monitoring import logs
from vdi.cli import bench, center, db, doctor, host, image, lab, pool, serve, totp
from vdi.config import ConfigError, load_config

DEFAULT_CONFIG = os.environ.get("VDI_CONFIG", "/etc/smartwork-vdi/vdi.toml")
GROUPS = (serve, lab, db, image, host, pool, center, totp, bench, doctor)


def _setup_logging(config) -> None:
    # Both the whole file (Config) and a gateway's part (GatewayConfig) carry [logging].
    logs.configure(getattr(config, "logging", None))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vdi",
        description="smartwork-vdi: the connection broker, console gateway, lab, database, images, hosts, pools "
        "and centers from one command line",
    )
    parser.add_argument(
        "--config", default=DEFAULT_CONFIG, help="TOML configuration file (default: %(default)s)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def _load(args: argparse.Namespace):
    if args.needs_config == "gateway":
        from gateway.config import load_gateway_config

        return load_gateway_config(args.config)
    if args.needs_config == "full" or os.path.exists(args.config):
        return load_config(args.config)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _load(args)
    except ConfigError as exc:
        print(f"vdi: invalid configuration: {exc}", file=sys.stderr)
        return 2
    _setup_logging(config)
    try:
        return args.fn(config, args)
    except DatabaseStartError as exc:  # database.url out of reach, or a schema newer than this code
        print(f"vdi: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
