"""`vdi db upgrade`: database maintenance."""

from __future__ import annotations

import argparse

from vdi.config import Config


def cmd_db_upgrade(config: Config, args: argparse.Namespace) -> int:
    from broker.db.migrate import upgrade

    before, after = upgrade(config.database.url, verbose=True)
    now = ", ".join(after) or "(empty)"
    if before == after:
        print(f"database is already at the latest revision {now}")
    else:
        print(f"database migrated from {', '.join(before) or '(empty)'} to {now}")
    return 0


def add_commands(sub) -> None:
    db = sub.add_parser("db", help="database maintenance", description="database maintenance")
    actions = db.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    text = "migrate the database to the latest schema"
    actions.add_parser("upgrade", help=text, description=text).set_defaults(
        fn=cmd_db_upgrade, needs_config="full"
    )
