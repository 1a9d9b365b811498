"""`vdi pool list|show|add|set|remove|rollout|rollout-status`: pools and their image rollouts.

Pools live in the database, which every broker shares (broker/pool_catalog.py); the configuration file
only seeds an empty one. `add` takes a pool's settings as JSON, `set NAME KEY=VALUE…` changes some (a
VALUE is read as JSON when it parses, else as text: `spares=2`, `groups=["mois"]`, `display_name=업무용`);
both are validated as the file would be and audited, and running brokers take them on within seconds.

A rollout is recorded in the database (the truth of desired state); the running broker's rollout manager
starts the canaries within seconds and promotes or rolls back. With `--wait`, `rollout` and `rollout-status`
follow it from the database until it is promoted (exit 0), rolled back (exit 1) or still unfinished when
`--timeout` runs out (exit 3), showing its state and the pool's desktops on the new version on stderr: a
line redrawn with a bar on a terminal, a plain line per change elsewhere. Blocking: command line only.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from functools import partial
from typing import TextIO

from pydantic import ValidationError

from broker import errors
from images.progress import bar

POLL_INTERVAL_S = 2.0
# Beyond a rollout's own deadline: a broker's pass to notice it, and the removal of its canaries.
WAIT_MARGIN_S = 60
EXIT_ROLLED_BACK = 1
EXIT_TIMED_OUT = 3


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

    with db.transaction() as session:
        sync_inventory(session, config)  # the pools are the database's (broker/pool_catalog.py)
    return _read_status(db, config, _pool(config, args.pool))


def _read_status(db, config, pool) -> dict:
    from broker.rollout import rollout_status

    with db.transaction() as session:
        return rollout_status(session, pool, config.images)


# -- following a rollout (--wait) ----------------------------------------------------------------------


def _progress_text(rollout: dict, with_bar: bool = False) -> str:
    progress = rollout["progress"]
    done, total = progress["desktops_on_version"], progress["desktops_total"]
    desktops = f"{done} of {total} desktop(s) on {rollout['image']}:{rollout['version']}"
    if with_bar:
        desktops = f"{bar(done, total)} {desktops}"
    return f"{desktops}, canaries {progress['canaries_started']} of {progress['canaries_wanted']} started"


def progress_line(status: dict, with_bar: bool = False) -> str:
    """One line on where the pool's rollout stands: its state, desktops on the new version, canaries."""
    rollout = status["rollout"]
    progress = _progress_text(rollout, with_bar)
    return f"pool {status['pool']}: rollout {rollout['id']} {rollout['state']}: {progress}"


class RolloutWatch:
    """Shows each status read: redrawn in place on a terminal, a plain line per change elsewhere (logs, CI)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.interactive = stream.isatty()
        self._last = ""

    def show(self, status: dict) -> None:
        line = progress_line(status, with_bar=self.interactive)
        if self.interactive:
            # Pad over the end of a longer line drawn before.
            self._write(f"\r{line.ljust(len(self._last))}")
        elif line != self._last:
            self._write(line + "\n")
        self._last = line

    def close(self) -> None:
        if self.interactive and self._last:
            self._write("\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def wait_for_rollout(read, timeout_s: float, watch: RolloutWatch) -> dict:
    """Read the status until the rollout is finished or `timeout_s` has passed; the last status read."""
    give_up = time.monotonic() + timeout_s
    try:
        while True:
            status = read()
            watch.show(status)
            if status["rollout"]["progress"]["finished"] or time.monotonic() >= give_up:
                return status
            time.sleep(POLL_INTERVAL_S)  # the command line's own pace: a broker pass is 2 s
    finally:
        watch.close()


def _wait(db, config, args, started: dict) -> dict:
    from broker.rollout import NoRollout

    pool = _pool(config, args.pool)
    rollout = started.get("rollout", started)
    if rollout is None:
        raise NoRollout(f"pool: {pool.name} has had no rollout to wait for.", field="pool", pool=pool.name)
    timeout_s = args.timeout if args.timeout is not None else rollout["deadline_s"] + WAIT_MARGIN_S
    return wait_for_rollout(partial(_read_status, db, config, pool), timeout_s, RolloutWatch(sys.stderr))


def _outcome(status: dict, command: str, timeout: int | None) -> int:
    """Exit status of a wait, with a line on stderr naming the pool and the state when it did not promote."""
    rollout = status["rollout"]
    name = f"pool {status['pool']}: rollout {rollout['id']} to {rollout['image']}:{rollout['version']}"
    if rollout["state"] == "promoted":
        return 0
    if rollout["state"] == "rolled_back":
        print(f"vdi pool {command}: {name} rolled_back: {rollout['reason']}", file=sys.stderr)
        return EXIT_ROLLED_BACK
    waited = timeout if timeout is not None else rollout["deadline_s"] + WAIT_MARGIN_S
    hint = " (no broker has taken it: is `vdi broker` running?)" if rollout["state"] == "pending" else ""
    print(
        f"vdi pool {command}: {name} is still {rollout['state']} after {waited} s{hint}; "
        "it goes on: `vdi pool rollout-status` follows it",
        file=sys.stderr,
    )
    return EXIT_TIMED_OUT


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
    if rollout.get("progress"):
        print(f"  progress {_progress_text(rollout)}")
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
        if not args.wait:
            _print(data, args.json)
            return 0
        if not args.json:
            _print(data, as_json=False)
        status = _wait(db, config, args, data)
    except errors.BrokerError as exc:
        print(f"vdi pool {args.pool_command}: {exc.message}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2
    finally:
        db.close()
    _print(status, args.json)
    return _outcome(status, args.pool_command, args.timeout)


def _wait_arguments(parser) -> None:
    parser.add_argument(
        "--wait",
        action="store_true",
        help="follow the rollout until it is promoted (exit 0), rolled back (1) or --timeout passes (3)",
    )
    parser.add_argument(
        "--timeout",
        type=_positive,
        metavar="SECONDS",
        help="with --wait: give up waiting after this long (default: the rollout's deadline + 60 s)",
    )


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"a whole number of seconds, 1 or more (not {text!r})")
    return value


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
    _wait_arguments(rollout)
    text = "the pool's current version and its newest rollout, with its progress"
    status = verbs.add_parser("rollout-status", help=text, description=text)
    status.add_argument("pool", help=POOL_HELP)
    status.add_argument("--json", action="store_true", help="print JSON")
    _wait_arguments(status)
