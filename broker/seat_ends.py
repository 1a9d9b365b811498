"""When a seat's booking ends, its user leaves the center terminal: signed out, consoles cut.

The kiosk page signs the user out at the end of the seat, but only while it is the page the terminal
shows (a console opens in the same tab) and only if its script runs. The broker is the truth of it: a
portal session opened at a center terminal expires when the seat ends (PortalAuth's seat gate), and this
job signs out everywhere (broker/signout.py: portal sessions, and the console access of desktop sessions,
which the gateways then close) every user whose desktop session was opened at a center where they hold
no seat any more: the booking ended, or an administrator cancelled it.
"""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial

from sqlalchemy import select
from sqlalchemy.orm import Session

from broker.auth import PortalAuth
from broker.background import PeriodicTask
from broker.db import Database
from broker.db.models import DesktopSession, utcnow
from broker.reservations import current_reservation
from monitoring.metrics import SignOutCause

log = logging.getLogger(__name__)

PASS_INTERVAL_S = 5.0
ACTOR = "seat-end"


def seats_ended(db: Session, now: dt.datetime) -> list[tuple[str, str]]:
    """(user, center) of active desktop sessions opened at a center where the user holds no seat now."""
    pairs = db.execute(
        select(DesktopSession.username, DesktopSession.center)
        .where(DesktopSession.state == "active", DesktopSession.center.is_not(None))
        .distinct()
    ).all()
    return [
        (username, center)
        for username, center in pairs
        if current_reservation(db, center, username, now) is None
    ]


class SeatEnds(PeriodicTask):
    """Signs out the users whose seat at a center ended while their desktop sessions there ran on."""

    name = "seat-ends"

    def __init__(self, db: Database, portal_auth: PortalAuth, interval_s: float = PASS_INTERVAL_S) -> None:
        super().__init__(interval_s)
        self.db = db
        self.portal_auth = portal_auth

    async def run_once(self) -> int:
        ended = await self.db.run(partial(seats_ended, now=utcnow()))
        for username, center in ended:
            log.info("seat ended: user=%s center=%s; signing out", username, center)
            await self.portal_auth.sign_out_user(username, ACTOR, SignOutCause.SEAT_ENDED, "")
        return len(ended)
