"""`vdi totp reset USERNAME`: an administrator at the broker host forgets a user's authenticator app.

The same database work as DELETE /api/v1/admin/users/{username}/totp, audited with the operating-system
user as actor (`cli:<user>`); blocking, for the command line only.
"""

from __future__ import annotations

import getpass
import sys

from broker import errors
from broker import login_security as guard


def run_totp_command(config, args) -> int:
    from broker.db import Database
    from broker.db.migrate import upgrade

    upgrade(config.database.url)
    db = Database(config.database)
    actor = f"cli:{getpass.getuser()}"
    try:
        with db.transaction() as session:
            guard.reset_totp(session, args.username, actor=actor, client_ip="", via="cli")
    except errors.BrokerError as exc:
        print(f"vdi totp reset: {exc.message}", file=sys.stderr)
        return 1 if exc.status >= 500 else 2
    finally:
        db.close()
    print(f"TOTP enrolment of {args.username} removed; they enrol again at a smart work center.")
    return 0


def add_commands(sub) -> None:
    """The `vdi totp` subcommands, added to the `vdi` parser."""
    totp = sub.add_parser("totp", help="TOTP second factor", description="TOTP second factor")
    totp.set_defaults(fn=run_totp_command, needs_config="full")
    verbs = totp.add_subparsers(dest="totp_command", required=True, metavar="ACTION")
    text = "remove a user's enrolled authenticator app (lost phone); they enrol again at a center"
    verbs.add_parser("reset", help=text, description=text).add_argument(
        "username", help="the user's directory login name (uid)"
    )
