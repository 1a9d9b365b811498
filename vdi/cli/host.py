"""`vdi host add|remove|enable|disable|drain|list|show`: the host inventory from the command line.

The same database work as the admin API (broker/inventory.py), audited with the operating-system
user as actor (`cli:<user>`); blocking, for the command line only.
"""

from __future__ import annotations

import getpass
import json
import sys

from pydantic import ValidationError

from broker import errors
from broker.db import Database
from broker.db.migrate import upgrade
from broker.db.models import Host
from broker.inventory import (
    HostChange,
    HostExists,
    HostView,
    NewHost,
    change_host,
    delete_host,
    insert_host,
    list_hosts,
    probe,
    seed_from_config,
    show_host,
    validate_labels,
)
from hypervisor.registry import provider_names

ADMIN_VERBS = {"enable": "enabled", "disable": "disabled", "drain": "draining"}


def _cli_actor() -> str:
    return f"cli:{getpass.getuser()}"


def _parse_labels(pairs: list[str]) -> dict[str, str]:
    labels = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise errors.InvalidField(f"labels: {pair!r} is not KEY=VALUE", field="labels")
        labels[key] = value
    return labels


def _cli_add(db, config, args) -> HostView:
    fields = {"name": args.name, "uri": args.uri, "labels": _parse_labels(args.label)}
    for key in (
        "provider",
        "vcpus",
        "memory_mib",
        "cpu_ratio",
        "ram_ratio",
        "max_desktops",
        "console_access",
        "ssh_address",
        "vnc_listen",
    ):
        if getattr(args, key) is not None:
            fields[key] = getattr(args, key)
    try:
        new = NewHost.model_validate(fields)
    except ValidationError as exc:
        raise errors.invalid_field(exc) from None
    validate_labels(new.labels or {}, config.placement)
    new.console_route()
    with db.transaction() as session:
        if session.get(Host, new.name) is not None:
            raise HostExists(f"A host named {new.name} already exists.", field="name", host=new.name)
    probe(new.settings()).close()
    with db.transaction() as session:
        return insert_host(session, new, _cli_actor(), "")


def _cli_run(db, config, args) -> HostView | list[HostView] | int:
    with db.transaction() as session:
        if args.host_command == "list":
            return list_hosts(session)
        if args.host_command == "show":
            return show_host(session, args.name)
        if args.host_command == "remove":
            return delete_host(session, args.name, args.force, _cli_actor(), "")
        change = HostChange(admin_state=ADMIN_VERBS[args.host_command])
        return change_host(session, args.name, change, _cli_actor(), "")


def _print_hosts(hosts: list[HostView]) -> None:
    print(f"{'NAME':<20} {'PROVIDER':<9} {'HEALTH':<6} {'ADMIN':<9} {'DESKTOPS':>9}  {'CONSOLE':<30} LABELS")
    for view in hosts:
        h = view.host
        labels = ",".join(f"{k}={v}" for k, v in sorted(h.labels.items()))
        console = f"ssh {view.ssh_address}" if view.console_access == "ssh" else view.console_access
        print(
            f"{h.name:<20} {view.provider:<9} {h.state:<6} {h.admin_state:<9} {h.desktops:>4}/{h.max_desktops:<4}"
            f"  {console:<30} {labels}"
        )


def run_host_command(config, args) -> int:
    """`vdi host ...`: blocking, for the command line only."""
    upgrade(config.database.url)
    db = Database(config.database)
    try:
        with db.transaction() as session:
            seed_from_config(session, config.hosts)
        result = _cli_add(db, config, args) if args.host_command == "add" else _cli_run(db, config, args)
    except errors.BrokerError as exc:
        print(f"vdi host {args.host_command}: {exc.message}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2
    finally:
        db.close()
    if isinstance(result, list) and not args.json:
        _print_hosts(result)
    elif isinstance(result, list):
        print(json.dumps([v.as_json() for v in result], indent=2, ensure_ascii=False))
    elif isinstance(result, HostView):
        print(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    else:
        print(f"host {args.name} removed ({result} desktop(s) detached)")
    return 0


NAME_HELP = "host name, as `vdi host list` shows it"


def add_commands(sub) -> None:
    """The `vdi host` subcommands, added to the `vdi` parser."""
    host = sub.add_parser("host", help="host inventory", description="host inventory")
    host.set_defaults(fn=run_host_command, needs_config="full")
    verbs = host.add_subparsers(dest="host_command", required=True, metavar="ACTION")
    add = verbs.add_parser(
        "add", help="connect to a host and add it", description="connect to a host and add it"
    )
    add.add_argument("name", help="a new host name, e.g. hv1")
    add.add_argument(
        "--provider",
        help=f"desktop provider that drives the host (registered: {', '.join(provider_names())}; default libvirt)",
    )
    add.add_argument(
        "--uri",
        required=True,
        help="where the provider reaches the host; libvirt: qemu:///system, qemu+ssh://..., test:///...",
    )
    add.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    add.add_argument("--vcpus", type=int, help="physical CPUs placement counts")
    add.add_argument("--memory-mib", dest="memory_mib", type=int, help="physical memory placement counts")
    add.add_argument("--cpu-ratio", dest="cpu_ratio", type=float, help="vCPU overcommit ratio")
    add.add_argument("--ram-ratio", dest="ram_ratio", type=float, help="RAM overcommit ratio")
    add.add_argument("--max-desktops", dest="max_desktops", type=int, help="most desktops on the host")
    add.add_argument(
        "--console-access",
        dest="console_access",
        help="how the gateway reaches displays: direct or ssh (default: ssh for qemu+ssh:// URIs)",
    )
    add.add_argument(
        "--ssh-address",
        dest="ssh_address",
        metavar="USER@HOST:PORT",
        help="the host's sshd for console access ssh (default: from a qemu+ssh:// URI)",
    )
    add.add_argument(
        "--vnc-listen",
        dest="vnc_listen",
        metavar="ADDRESS",
        help="address the host's desktops show their displays on (default 127.0.0.1: reach them over ssh)",
    )
    remove = verbs.add_parser("remove", help="remove a host", description="remove a host")
    remove.add_argument("name", help=NAME_HELP)
    remove.add_argument("--force", action="store_true", help="remove even if desktops are still on it")
    for verb, state in ADMIN_VERBS.items():
        text = f"set a host's admin state to {state}"
        verbs.add_parser(verb, help=text, description=text).add_argument("name", help=NAME_HELP)
    listing = verbs.add_parser("list", help="list hosts", description="list hosts")
    listing.add_argument("--json", action="store_true", help="print JSON")
    verbs.add_parser("show", help="one host as JSON", description="one host as JSON").add_argument(
        "name", help=NAME_HELP
    )
