"""`vdi lab start|stop|status|hosts`: the local lab of real components (docs/lab.md)."""

from __future__ import annotations

import argparse

from vdi.config import Config


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


def add_commands(sub) -> None:
    text = "manage the local lab (slapd with the demo directory, libvirtd)"
    lab = sub.add_parser("lab", help=text, description=text)
    lab.set_defaults(fn=cmd_lab, needs_config="full")
    lab.add_argument("action", choices=["start", "stop", "status", "hosts"], help="what to do with the lab")
    lab.add_argument(
        "hosts_action",
        nargs="?",
        choices=["up", "down", "status"],
        help="with `hosts`: the multi-host lab of libvirt hosts hv1..hv3 in network namespaces (docs/lab.md)",
    )
