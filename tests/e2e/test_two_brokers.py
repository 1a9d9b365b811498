"""Two brokers on one PostgreSQL behind HAProxy, both alive: what they share must not be done twice
(tests/fixtures/ha.py).

- Connect pressed for one user on both brokers at the same moment ends with one live session.
- The pool's spares converge to the configured number with both brokers running, and no desktop beyond
  that is ever made (the pool manager runs on the lease holder only).
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine, func, select

from broker.db.models import Desktop, DesktopSession
from tests.fixtures.common import wait_until
from tests.fixtures.ha import POOL
from tests.fixtures.portal import user_in
from vdi.bench.logon_storm import client_tls, new_client, one_logon

pytestmark = pytest.mark.e2e

SPARES = 2  # tests/fixtures/ha.py's pool


def scalar(lab, query):
    engine = create_engine(lab.database_url)
    try:
        with engine.connect() as connection:
            return connection.scalar(query)
    finally:
        engine.dispose()


def test_connect_for_one_user_on_both_brokers_at_once_gives_one_session(ha_lab, demo_users):
    lab = ha_lab.lab
    user = user_in(demo_users, "mois")

    async def scenario() -> list[int]:
        async with new_client() as http:
            await one_logon(
                http, lab.front_url, user.uid, user.password, POOL, client_tls(lab.certificate), "desktops"
            )
            # The portal cookie and the XSRF pair work on either broker (one cookie_secret); sent straight
            # to each broker's own port, past HAProxy, so the two requests surely land on both.
            cookies = "; ".join(f"{c.key}={c.value}" for c in http.cookie_jar)
            xsrf = next(c.value for c in http.cookie_jar if c.key == "_xsrf")
            headers = {"Cookie": cookies, "X-XSRFToken": xsrf}

            async def connect(broker) -> int:
                url = f"http://127.0.0.1:{broker.port}/api/v1/pools/{POOL}/connect"
                async with http.post(url, headers=headers) as reply:
                    await reply.read()
                    return reply.status

            return await asyncio.gather(*(connect(broker) for broker in lab.of_kind("broker")))

    statuses = asyncio.run(scenario())
    assert 200 in statuses and set(statuses) <= {200, 409}, statuses
    live = (
        select(func.count())
        .select_from(DesktopSession)
        .where(DesktopSession.username == user.uid, DesktopSession.state == "active")
    )
    assert scalar(lab, live) == 1


def test_spares_converge_with_both_brokers_running_and_never_overshoot(ha_lab):
    lab = ha_lab.lab
    wait_until(lambda: len(lab.stub_desktops()) == SPARES, 60, "the pool's spares")
    leaders = [b.name for b in lab.of_kind("broker") if "pool-manager" in _leads(b)]
    assert len(leaders) == 1
    # Every desktop ever made for the pool is a row, deleted ones included: none beyond the spares.
    made = select(func.count()).select_from(Desktop).where(Desktop.pool_name == POOL)
    assert scalar(lab, made) == SPARES
    assert len(lab.stub_desktops()) == SPARES


def _leads(broker) -> list[str]:
    import json
    import urllib.request

    with urllib.request.urlopen(broker.health_url, timeout=10) as response:
        return json.loads(response.read())["leads"]
