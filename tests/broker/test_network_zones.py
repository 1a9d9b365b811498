"""Network zones through the broker: a console token carries the pool's zone and the center terminal's,
so the gateway blocks the clipboard between zones (the toy provider runs the desktops)."""

from sqlalchemy import select

from broker.db import Database
from broker.db.models import ConsoleToken
from tests.fixtures.broker_api import signed_in
from tests.fixtures.centers import AWAY_ADDRESS, INTERNET_ADDRESS, add_center, at, connect_at, login_at


def stored_policies(config) -> list[dict]:
    database = Database(config.database)
    try:
        with database.transaction() as session:
            return [t.policy for t in session.scalars(select(ConsoleToken).order_by(ConsoleToken.created_at))]
    finally:
        database.close()


def test_a_console_at_an_internet_terminal_carries_both_zones(toy_centers_url, toy_centers_config):
    admin = signed_in(toy_centers_url, "kimmj")
    add_center(admin)
    user, response = login_at(toy_centers_url, "choijw", INTERNET_ADDRESS)
    assert response.status == 200
    session = connect_at(user, "moef-office", INTERNET_ADDRESS)
    grant = user.post(f"/api/v1/sessions/{session['session_id']}/console-token", headers=at(INTERNET_ADDRESS))
    assert grant.status == 200, grant.text
    away = connect_at(admin, "mois-office", AWAY_ADDRESS)
    assert admin.post(f"/api/v1/sessions/{away['session_id']}/console-token").status == 200
    at_center, from_home = stored_policies(toy_centers_config)
    assert (at_center["zone"], at_center["client_zone"], at_center["cross_zone_clipboard"]) == (
        "business",
        "internet",
        False,
    )
    assert (from_home["zone"], from_home["client_zone"]) == ("business", None)
