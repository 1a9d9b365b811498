"""`vdi pool list|show|add|set|remove|rollout|rollout-status`: pools and their image rollouts.

Pools live in the database, which every broker shares (broker/pool_catalog.py); the configuration file
only seeds an empty one. `add` takes a pool's settings as JSON, `set NAME KEY=VALUE…` changes some (a
VALUE is read as JSON when it parses, else as text: `spares=2`, `groups=["mois"]`, `display_name=업무용`);
both are validated as the file would be and audited, and running brokers take them on within seconds.

A rollout is recorded in the database (the truth of desired state); the running broker's rollout manager
starts the canaries within seconds and promotes or rolls back. Blocking: command line only.
"""

from __future__ import annotations

import getpass
import json
import sys

from pydantic import ValidationError

from broker import errors


def _actor() -> str:
    return f"cli:{getpass.getuser()}"


def _request(args):
    from broker.rollout import RolloutRequest

    fields = {"version": args.version, "canary": args.canary, "deadline_s": args.deadline}
    try:
        return RolloutRequest.model_validate(fields)
    except ValidationError as exc:
        raise errors.invalid_field(exc) from None


def _pool(config, name: str):
    pool = config.pool(name)
    if pool is None:
        raise errors.UnknownPool(f"pool: there is no pool named {name}.", field="pool")
    return pool


def _rollout(db, config, args) -> dict:
    from broker.app import sync_inventory
    from broker.rollout import begin_rollout, current_ref

    with db.transaction() as session:
        sync_inventory(session, config)  # the pools are the database's (broker/pool_catalog.py)
    pool, request = _pool(config, args.pool), _request(args)
    with db.transaction() as session:
        current = current_ref(session, pool, config.images)
        return begin_rollout(session, pool, request, current, _actor(), "").as_json()


def _status(db, config, args) -> dict:
    from broker.app import sync_inventory
    from broker.rollout import NoRollout, current_ref, latest_rollout

    with db.transaction() as session:
        sync_inventory(session, config)  # the pools are the database's (broker/pool_catalog.py)
    pool = _pool(config, args.pool)
    with db.transaction() as session:
        try:
            rollout = latest_rollout(session, pool.name).as_json()
        except NoRollout:
            rollout = None
        return {"pool": pool.name, "image": current_ref(session, pool, config.images), "rollout": rollout}


def _print(data: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
        return
    rollout = data.get("rollout", data)
    if "image" in data and "rollout" in data:
        print(f"pool {data['pool']} is on {data['image']}")
    if rollout is None:
        print("no rollout yet")
        return
    print(f"rollout {rollout['id']}: {rollout['image']}:{rollout['version']} from {rollout['from_image']}")
    print(
        f"  state    {rollout['state']}  (canary {rollout['canary']} = {rollout['canary_count']} desktop(s))"
    )
    print(f"  deadline {rollout['deadline_s']} s, at {rollout['deadline_at']}")
    if rollout["canaries"]:
        print(f"  canaries {', '.join(rollout['canaries'])}")
    if rollout["reason"]:
        print(f"  reason   {rollout['reason']}")


def _settings(pairs: list[str]) -> dict:
    changes = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise errors.InvalidField(f"{pair}: expected KEY=VALUE", field=pair)
        try:
            changes[key] = json.loads(value)
        except json.JSONDecodeError:
            changes[key] = value
    return changes


def _catalog(db, config, args) -> dict:
    from broker.app import sync_inventory
    from broker.pool_catalog import add_pool, change_pool, list_pools, remove_pool, show_pool

    with db.transaction() as session:
        sync_inventory(session, config)  # an empty database is seeded from the file first, as at start
        verb = args.pool_command
        if verb == "list":
            return {"pools": list_pools(session)}
        if verb == "show":
            return show_pool(session, args.pool)
        if verb == "add":
            try:
                data = json.loads(args.settings)
            except json.JSONDecodeError as exc:
                raise errors.InvalidJson(f"settings: not valid JSON: {exc.msg}") from None
            return show_pool(session, add_pool(session, data, _actor(), "").name)
        if verb == "set":
            change_pool(session, args.pool, _settings(args.settings), _actor(), "")
            return show_pool(session, args.pool)
        remove_pool(session, args.pool, _actor(), "")
        return {"removed": args.pool}


def _run(db, config, args) -> dict:
    if args.pool_command == "rollout":
        return _rollout(db, config, args)
    if args.pool_command == "rollout-status":
        return _status(db, config, args)
    return _catalog(db, config, args)


def run_pool_command(config, args) -> int:
    from broker.db import Database
    from broker.db.migrate import upgrade

    upgrade(config.database.url)
    db = Database(config.database)
    try:
        data = _run(db, config, args)
        if not args.pool_command.startswith("rollout"):
            print(json.dumps(data, indent=2, ensure_ascii=False))
            return 0
    except errors.BrokerError as exc:
        print(f"vdi pool {args.pool_command}: {exc.message}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2
    finally:
        db.close()
    _print(data, args.json)
    return 0


POOL_HELP = "pool name, as `vdi pool list` shows it"


def add_commands(sub) -> None:
    """The `vdi pool` subcommands, added to the `vdi` parser."""
    text = "desktop pools (shared by every broker through the database) and their image rollouts"
    pool = sub.add_parser("pool", help=text, description=text)
    pool.set_defaults(fn=run_pool_command, needs_config="full")
    verbs = pool.add_subparsers(dest="pool_command", required=True, metavar="ACTION")

    def verb(name: str, text: str):
        return verbs.add_parser(name, help=text, description=text)

    verb("list", "every pool's settings, as JSON")
    verb("show", "one pool's settings, as JSON").add_argument("pool", help=POOL_HELP)
    add = verb("add", "add a pool: its settings as a JSON object, as a [[pools]] entry")
    add.add_argument(
        "settings", help='e.g. \'{"name": "mois-office", "display_name": "…", "groups": ["mois"]}\''
    )
    change = verb("set", "change settings of a pool: KEY=VALUE (VALUE as JSON, else text)")
    change.add_argument("pool", help=POOL_HELP)
    change.add_argument("settings", nargs="+", metavar="KEY=VALUE", help="e.g. spares=2 display_name=Office")
    verb("remove", "remove a pool that has no desktops").add_argument("pool", help=POOL_HELP)
    text = "move a pool to another version of its image, canary desktops first"
    rollout = verbs.add_parser("rollout", help=text, description=text)
    rollout.add_argument("pool", help=POOL_HELP)
    rollout.add_argument("version", help="catalog version of the pool's image (vdi image list)")
    rollout.add_argument("--canary", default="1", help="canary desktops: a count (1) or a share (20%%)")
    rollout.add_argument(
        "--deadline", type=int, default=300, metavar="SECONDS", help="time for every canary to show ready"
    )
    rollout.add_argument("--json", action="store_true", help="print JSON")
    text = "the pool's current version and its newest rollout"
    status = verbs.add_parser("rollout-status", help=text, description=text)
    status.add_argument("pool", help=POOL_HELP)
    status.add_argument("--json", action="store_true", help="print JSON")
