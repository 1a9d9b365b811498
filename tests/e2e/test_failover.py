"""Failover of brokers and gateways behind HAProxy (docs/ha.md): two real `vdi broker` and two `vdi gateway`
processes on one PostgreSQL, HAProxy in front, and SIGKILL as the failure (tests/fixtures/ha.py).

- a broker killed during a stream of logons: logons go on through the other one;
- an open console tunnel does not depend on any broker: it survives them all dying;
- the broker leading the background jobs killed: the other takes every job within 15 s (lease TTL 10 s),
  says so in its log and its lease metric;
- a gateway killed: its console comes back through the other gateway with a fresh token;
- Chromium's console (noVNC) keeps working through a broker's death and reconnects by itself through the
  other gateway when its own dies.
"""

from __future__ import annotations

import asyncio
import json
import re
import struct
import threading
import time
import urllib.request

import pytest

from tests.fixtures.common import wait_until
from tests.fixtures.gateway import eventually
from tests.fixtures.ha import POOL
from tests.fixtures.portal import user_in
from vdi.bench.logon_storm import Results, client_tls, new_client, one_logon, storm

pytestmark = pytest.mark.e2e

JOBS = {"console-token-purge", "host-monitor", "pool-manager", "rollout-manager", "seat-ends"}


def health(member) -> dict:
    with urllib.request.urlopen(member.health_url, timeout=10) as response:
        return json.loads(response.read())


def lease_gauge(member, job: str) -> float | None:
    url = member.health_url.replace("/healthz", "/metrics")
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf'^vdi_background_leases_held\{{job="{job}"\}} (\S+)$', text, re.MULTILINE)
    return float(found[1]) if found else None


# -- a console over a WebSocket, as noVNC speaks it -------------------------------------------------------


class Console:
    """An RFB client on the gateway's WebSocket: handshake to ServerInit, then key events."""

    def __init__(self, socket) -> None:
        self.socket = socket
        self.buffer = b""

    async def read(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += await self.socket.receive_bytes(timeout=30)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    async def handshake(self) -> bytes:
        assert (await self.read(12)).startswith(b"RFB 003.")
        await self.socket.send_bytes(b"RFB 003.008\n")
        offered = await self.read((await self.read(1))[0])
        assert 1 in offered, offered  # the gateway logged in to the desktop itself: None for the browser
        await self.socket.send_bytes(b"\x01")
        assert await self.read(4) == b"\0\0\0\0"
        await self.socket.send_bytes(b"\x01")  # ClientInit: shared
        head = await self.read(24)
        return await self.read(struct.unpack(">I", head[20:24])[0])

    async def key(self, keysym: int = 0x61) -> None:
        for down in (1, 0):
            await self.socket.send_bytes(struct.pack(">BBxxI", 4, down, keysym))


async def session_console(http, lab, user, session_id: str | None = None):
    """Sign in (unless `session_id`), connect to the pool, and open a console: (session id, Console)."""
    tls = client_tls(lab.certificate)
    front = lab.front_url
    if session_id is None:
        await one_logon(http, front, user.uid, user.password, POOL, tls, through="desktops")
        session_id = (await post(http, lab, f"/api/v1/pools/{POOL}/connect"))["session_id"]
    grant = await post(http, lab, f"/api/v1/sessions/{session_id}/console-token")
    # The URL may carry the request id already (?rid=…, docs/logging.md).
    separator = "&" if "?" in grant["gateway_url"] else "?"
    url = f"{grant['gateway_url']}{separator}token={grant['token']}"
    socket = await http.ws_connect(url, origin=front, ssl=tls)
    console = Console(socket)
    assert await console.handshake() == b"smartwork-vdi stub desktop"
    return session_id, console


async def post(http, lab, path: str) -> dict:
    xsrf = next(c.value for c in http.cookie_jar if c.key == "_xsrf")
    tls = client_tls(lab.certificate)
    async with http.post(lab.front_url + path, headers={"X-XSRFToken": xsrf}, ssl=tls) as reply:
        assert reply.status == 200, (path, reply.status, await reply.text())
        return await reply.json()


# -- brokers --------------------------------------------------------------------------------------------


def test_logons_go_on_through_the_other_broker_within_5_s_of_a_sigkill(ha_lab, demo_users):
    lab = ha_lab.lab
    users = [user_in(demo_users, "mois")]
    results, stop = Results(), threading.Event()
    stream = threading.Thread(
        target=lambda: asyncio.run(
            storm(lab.front_url, [u.uid for u in users], users[0].password, POOL, client_tls(lab.certificate),
                  rate=4, duration_s=300, stop=stop, through="desktops", results=results)
        )
    )  # fmt: skip
    stream.start()
    try:
        wait_until(lambda: results.succeeded >= 6, 60, "logons through both brokers")
        lab.kill("b1")
        killed = time.perf_counter() - results.t0
        wait_until(
            lambda: sum(ok for started, ok in results.timeline if started >= killed + 5) >= 8,
            90,
            "logons after the kill",
        )
    finally:
        stop.set()
        stream.join(120)
    late = [ok for started, ok in results.timeline if started >= killed + 5]
    assert late and all(late), results.failures
    assert lab.wait_front_sees(lambda state: state.startswith("DOWN"), "b1 down", names=["b1"])


def test_an_open_console_outlives_every_broker(ha_lab, demo_users):
    lab, stub = ha_lab.lab, ha_lab.stub
    user = user_in(demo_users, "mois")

    async def scenario() -> None:
        async with new_client() as http:
            _, console = await session_console(http, lab, user)
            await console.key()
            await eventually(lambda: stub.key_events >= 2, 30, "keys before")
            for broker in lab.of_kind("broker"):
                lab.kill(broker.name)
            await console.key()
            await eventually(lambda: stub.key_events >= 4, 30, "keys after every broker died")
            assert not console.socket.closed
            assert stub.open == 1

    asyncio.run(scenario())


def test_a_dead_leaders_jobs_move_to_the_other_broker_within_15_s(ha_lab):
    lab = ha_lab.lab
    first, second = lab.of_kind("broker")
    wait_until(lambda: sorted(health(first)["leads"] + health(second)["leads"]) == sorted(JOBS), 30, "leads")
    leader = first if "pool-manager" in health(first)["leads"] else second
    survivor = second if leader is first else first
    log_before = survivor.log_path.read_text()
    lab.kill(leader.name)
    killed = time.monotonic()
    wait_until(lambda: set(health(survivor)["leads"]) == JOBS, 20, "the survivor leads every job")
    assert time.monotonic() - killed < 15
    assert lease_gauge(survivor, "pool-manager") == 1
    taken_over = survivor.log_path.read_text()[len(log_before) :]
    assert "now runs pool-manager" in taken_over


# -- gateways -------------------------------------------------------------------------------------------


def test_a_console_comes_back_through_the_other_gateway_with_a_fresh_token(ha_lab, demo_users):
    lab, stub = ha_lab.lab, ha_lab.stub
    user = user_in(demo_users, "mois")

    async def scenario() -> None:
        async with new_client() as http:
            session_id, console = await session_console(http, lab, user)
            gateway = next(g for g in lab.of_kind("gateway") if health(g)["tunnels_open"] == 1)
            other = next(g for g in lab.of_kind("gateway") if g is not gateway)
            lab.kill(gateway.name)
            # The tunnel drops: the next read finds the connection closed (no bytes, a CLOSED message).
            with pytest.raises(TypeError, match=r"is not WSMsgType\.BINARY"):
                await console.read(1)
            assert console.socket.closed
            _, console = await session_console(http, lab, user, session_id)
            assert health(other)["tunnels_open"] == 1
            await console.key()
            await eventually(lambda: stub.key_events >= 2, 30, "keys through the other gateway")
            await console.socket.close()

    asyncio.run(scenario())


def test_chromium_console_survives_a_broker_and_reconnects_through_the_other_gateway(
    ha_lab, demo_users, browser, artifacts_dir
):
    lab, stub = ha_lab.lab, ha_lab.stub
    user = user_in(demo_users, "mois")
    context = browser.new_context(locale="ko-KR", ignore_https_errors=True)
    page = context.new_page()
    try:
        page.goto(f"{lab.front_url}/login")
        page.fill("input[name=username]", user.uid)
        page.fill("input[name=password]", user.password)
        page.click("button[type=submit]")
        page.wait_for_url(f"{lab.front_url}/desktops")
        page.click(f"li[data-pool='{POOL}'] button.connect")
        page.wait_for_url(f"{lab.front_url}/console/*")
        connected = page.locator("#console-status[data-state=connected]")
        connected.wait_for(timeout=60_000)

        lab.kill("b1")
        page.locator("#screen canvas").click()
        page.keyboard.press("a")
        wait_until(lambda: stub.key_events >= 2, 30, "keys after the broker died")
        assert page.locator("#console-status").get_attribute("data-state") == "connected"

        gateway = next(g for g in lab.of_kind("gateway") if health(g)["tunnels_open"] == 1)
        connections = stub.connections
        lab.kill(gateway.name)
        # noVNC sees the tunnel break and the page opens it again with a fresh token, through the other
        # gateway (HAProxy marked this one down) and the surviving broker.
        wait_until(lambda: stub.connections > connections, 60, "the console reconnected")
        connected.wait_for(timeout=60_000)
        keys = stub.key_events
        page.locator("#screen canvas").click()
        page.keyboard.press("b")
        wait_until(lambda: stub.key_events > keys, 30, "keys through the other gateway")
        page.screenshot(path=str(artifacts_dir / "e2e-failover-console.png"))
    finally:
        context.close()
