"""Degraded mode on a real PostgreSQL of the test's own, stopped and started again: open console tunnels keep
relaying, new logons, connects and tunnels are refused with a clear 503 (no hang), and all of it works
again by itself once the server is back (docs/database.md)."""

from __future__ import annotations

import asyncio

from broker.db.migrate import upgrade
from monitoring.metrics import DATABASE_UNAVAILABLE_REFUSALS
from tests.fixtures.broker import (
    TEST_IMAGE,
    BrokerClient,
    BrokerThread,
    FakeAuthenticator,
    UnreachableProvider,
    make_broker_config,
)
from tests.fixtures.common import wait_until
from tests.fixtures.gateway import (
    RFB_BANNER,
    ConsoleDatabase,
    read_close,
    receive_until,
    run_async,
    running_gateway,
)
from vdi.config import load_config

UNAVAILABLE = "The service is temporarily unavailable. Please try again in a moment."
UNAVAILABLE_KO = "서비스를 일시적으로 사용할 수 없습니다. 잠시 후 다시 시도하세요."


def refused_as_unavailable(response) -> None:
    assert response.status == 503, response.text
    error = response.json()["error"]
    assert error["reason"] == "database_unavailable"
    assert error["message"] == UNAVAILABLE


def test_postgresql_stopped_and_started(private_postgres, tmp_path, fake_vnc, gateway_config_file):
    url = private_postgres.create_database("degraded")
    upgrade(url)
    console = ConsoleDatabase(tmp_path / "unused", url=url)
    config = make_broker_config(tmp_path / "unused.db", database={"url": url})
    broker = BrokerThread(
        config,
        authenticator=FakeAuthenticator(),
        providers={host.name: UnreachableProvider(host) for host in config.hosts},
        image_resolver=lambda pool: TEST_IMAGE,
    )
    gateway_config = load_config(gateway_config_file)
    gateway_config.database.url = url
    client = BrokerClient(broker.base_url)
    session = console.add_session(vnc_port=fake_vnc.port)
    open_token, later_token = console.issue(session), console.issue(session)

    async def scenario() -> None:
        async with fake_vnc.serving(), running_gateway(gateway_config, console.db) as gateway:
            tunnel = await gateway.connect(open_token)
            assert await receive_until(tunnel, RFB_BANNER) == RFB_BANNER
            assert (await asyncio.to_thread(client.login, "kimmj")).status == 200

            await asyncio.to_thread(private_postgres.stop)
            refusals = DATABASE_UNAVAILABLE_REFUSALS._value.get()
            # New logons, connects and pages: a 503 that says so, in JSON and on the page.
            refused_as_unavailable(await asyncio.to_thread(BrokerClient(broker.base_url).login, "choijw"))
            refused_as_unavailable(await asyncio.to_thread(client.post, "/api/v1/pools/mois-office/connect"))
            page = await asyncio.to_thread(client.get, "/desktops")
            assert page.status == 503
            assert UNAVAILABLE_KO in page.text  # the portal's default language
            assert (await asyncio.to_thread(client.get, "/healthz")).status == 503
            assert DATABASE_UNAVAILABLE_REFUSALS._value.get() >= refusals + 3
            # A new tunnel cannot consume its token; the open one keeps relaying both ways.
            code, _ = await read_close(await gateway.connect(later_token))
            assert code == 1011
            tunnel.write_message(b"still there", binary=True)
            assert (await receive_until(tunnel, b"still there")).endswith(b"still there")

            await asyncio.to_thread(private_postgres.start)
            await asyncio.to_thread(
                wait_until, lambda: client.get("/healthz").status == 200, 30, "broker healthy again"
            )
            assert (await asyncio.to_thread(BrokerClient(broker.base_url).login, "choijw")).status == 200
            assert (await asyncio.to_thread(client.get, "/desktops")).status == 200
            again = await gateway.connect(console.issue(session))
            assert await receive_until(again, RFB_BANNER) == RFB_BANNER
            tunnel.write_message(b"and after", binary=True)
            assert (await receive_until(tunnel, b"and after")).endswith(b"and after")
            again.close()
            tunnel.close()

    try:
        run_async(scenario(), timeout_s=120)
    finally:
        broker.stop()
        console.close()
