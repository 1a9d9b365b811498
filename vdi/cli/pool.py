"""`vdi pool rollout|rollout-status`: image rollouts from the command line.

The command records the rollout in the database (the truth of desired state); the running broker's
rollout manager starts the canaries within seconds and promotes or rolls back. Blocking: command line only.
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
        raise errors.UnknownPool(f"pool: there is no pool named {name} in the configuration.", field="pool")
    return pool


def _rollout(db, config, args) -> dict:
    from broker.app import sync_inventory
    from broker.rollout import begin_rollout, current_ref

    pool, request = _pool(config, args.pool), _request(args)
    with db.transaction() as session:
        sync_inventory(session, config)  # the pool's row, as the broker would record it at start
        current = current_ref(session, pool, config.images)
        return begin_rollout(session, pool, request, current, _actor(), "").as_json()


def _status(db, config, args) -> dict:
    from broker.rollout import NoRollout, current_ref, latest_rollout

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


def run_pool_command(config, args) -> int:
    from broker.db import Database
    from broker.db.migrate import upgrade

    upgrade(config.database.url)
    db = Database(config.database)
    try:
        data = _rollout(db, config, args) if args.pool_command == "rollout" else _status(db, config, args)
    except errors.BrokerError as exc:
        print(f"vdi pool {args.pool_command}: {exc.message}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2
    finally:
        db.close()
    _print(data, args.json)
    return 0


def add_commands(sub) -> None:
    """The `vdi pool` subcommands, added to the `vdi` parser."""
    pool = sub.add_parser(
        "pool", help="desktop pools: image rollouts", description="desktop pools: image rollouts"
    )
    pool.set_defaults(fn=run_pool_command, needs_config="full")
    verbs = pool.add_subparsers(dest="pool_command", required=True, metavar="ACTION")
    text = "move a pool to another version of its image, canary desktops first"
    rollout = verbs.add_parser("rollout", help=text, description=text)
    rollout.add_argument("pool")
    rollout.add_argument("version", help="catalog version of the pool's image (vdi image list)")
    rollout.add_argument("--canary", default="1", help="canary desktops: a count (1) or a share (20%%)")
    rollout.add_argument(
        "--deadline", type=int, default=300, metavar="SECONDS", help="time for every canary to show ready"
    )
    rollout.add_argument("--json", action="store_true", help="print JSON")
    text = "the pool's current version and its newest rollout"
    status = verbs.add_parser("rollout-status", help=text, description=text)
    status.add_argument("pool")
    status.add_argument("--json", action="store_true", help="print JSON")
