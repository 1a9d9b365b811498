"""The administrators' recording player in headless Chromium: a console recorded through the real gateway
from a real Xvnc (a red screen, then a blue one) plays back on noVNC's canvas, seeks back to the red
screen, is audited, keyboard-driven and clean under axe-core; anyone not an administrator gets 403."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from broker.db import Database
from broker.db.models import AuditEvent
from tests.fixtures.broker import (
    COOKIE_SECRET,
    PASSWORD,
    TEST_IMAGE,
    LoopThread,
    UnreachableProvider,
    make_broker_config,
)
from tests.fixtures.gateway import ConsoleDatabase
from tests.fixtures.recordings import (
    HEIGHT,
    WIDTH,
    XVNC_PASSWORD,
    TwoColourRecording,
    axe_violations,
    gateway_config_with_recording,
    record_two_colours,
)
from vdi.bench.recording import LocalXvnc

pytestmark = pytest.mark.e2e

ADMIN, NON_ADMIN = "kimmj", "choijw"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Iterator[TwoColourRecording]:
    """One recording for the module, made on a loop thread (Playwright holds the main thread's loop)."""
    scratch = tmp_path_factory.mktemp("recorded")
    console_db = ConsoleDatabase(scratch / "gateway.db")
    config = gateway_config_with_recording(scratch, console_db.url, scratch / "recordings")
    loop = LoopThread("recording")
    try:
        with LocalXvnc(scratch / "xvnc", XVNC_PASSWORD, WIDTH, HEIGHT) as server:
            yield loop.call(record_two_colours(config, console_db, server), timeout_s=120)
    finally:
        loop.close()
        console_db.close()


@dataclass
class PlayerStack:
    base_url: str
    db: Database
    recording: TwoColourRecording


@pytest.fixture
def player(tmp_path: Path, recorded, broker_server, fake_authenticator) -> Iterator[PlayerStack]:
    config = make_broker_config(
        tmp_path / "broker.db",
        broker={
            "cookie_secret": COOKIE_SECRET,
            "gateway_url": "ws://127.0.0.1:9/ws",
            "admin_groups": ["mois"],
            "recording_dir": str(recorded.root),
        },
    )
    providers = {host.name: UnreachableProvider(host) for host in config.hosts}
    base_url = broker_server(
        config, authenticator=fake_authenticator, providers=providers, image_resolver=lambda pool: TEST_IMAGE
    )
    database = Database(config.database)
    yield PlayerStack(base_url, database, recorded)
    database.close()


def sign_in(page, base_url: str, path: str, user: str) -> None:
    page.goto(f"{base_url}/login?next={path}")
    page.get_by_label("사용자 ID").fill(user)
    page.get_by_label("비밀번호").fill(PASSWORD)
    page.get_by_role("button", name="로그인").click()
    page.wait_for_url(f"**{path}")


# Three quarters across and down: the middle has the X pointer drawn into the framebuffer.
CENTRE_PIXEL = """() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || canvas.width < 4) return null;
  const [x, y] = [Math.floor(canvas.width * 3 / 4), Math.floor(canvas.height * 3 / 4)];
  const [r, g, b] = canvas.getContext('2d').getImageData(x, y, 1, 1).data;
  return [r, g, b];
}"""


def wait_centre(page, colour: tuple[int, int, int], timeout_ms: int = 30_000) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    try:
        page.wait_for_function(
            f"() => JSON.stringify(({CENTRE_PIXEL})()) === JSON.stringify({list(colour)})", timeout=timeout_ms
        )
    except PlaywrightTimeout:
        shown = page.evaluate(CENTRE_PIXEL)
        state = page.evaluate("JSON.stringify(window.vdiPlayer)")
        raise AssertionError(
            f"the canvas centre shows {shown}, not {list(colour)} (player {state})"
        ) from None


def audit(db: Database, action: str) -> list[tuple[str, str, dict]]:
    with db.transaction() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))
        return [(row.actor, row.target, row.detail) for row in rows]


def test_the_list_finds_the_recording_by_user_and_session(player, page):
    index = player.recording.index
    sign_in(page, player.base_url, "/admin/recordings", ADMIN)
    assert page.locator(f'tr[data-recording="{index.id}"]').count() == 1
    page.get_by_label("사용자").fill("nobody")
    page.get_by_role("button", name="검색").click()
    page.locator("#no-recordings").wait_for()
    page.get_by_label("사용자").fill(index.username)
    page.get_by_label("세션 ID").fill(index.session_id)
    page.get_by_role("button", name="검색").click()
    page.locator(f'tr[data-recording="{index.id}"]').wait_for()
    assert axe_violations(page) == []


def test_a_recording_plays_to_its_end_and_seeks_back(player, page):
    recording = player.recording
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    path = f"/admin/recordings/{recording.index.id}"
    sign_in(page, player.base_url, path, ADMIN)

    page.locator('#player-status[data-state="ended"]').wait_for(timeout=60_000)
    wait_centre(page, (0, 0, 255))
    assert page.locator("#player-status").text_content() == "재생이 끝났습니다"

    # Seek to the last moment of the red screen: a new stream, decoded from the start at full speed.
    page.locator("#seek").fill(str(recording.red_until_ms))
    wait_centre(page, (255, 0, 0))
    assert page.evaluate("window.vdiPlayer.streams") == 2
    # And on to the end again, from the blue screen's first update.
    page.locator("#seek").fill(str(recording.blue_from_ms))
    wait_centre(page, (0, 0, 255))
    assert problems == []

    plays = audit(player.db, "recording.play")
    assert [(actor, target) for actor, target, _ in plays] == [(ADMIN, recording.index.id)] * 3
    assert [detail["start_ms"] for _, _, detail in plays] == [
        0,
        recording.red_until_ms,
        recording.blue_from_ms,
    ]
    assert plays[0][2]["user"] == recording.index.username
    [(actor, target, detail)] = audit(player.db, "recording.view")
    assert (actor, target, detail["session"]) == (ADMIN, recording.index.id, recording.index.session_id)


def test_the_player_is_driven_by_keyboard_and_passes_axe(player, page):
    path = f"/admin/recordings/{player.recording.index.id}"
    sign_in(page, player.base_url, path, ADMIN)
    page.locator('#player-status[data-state="ended"]').wait_for(timeout=60_000)
    assert axe_violations(page) == []

    page.locator("#speed").focus()
    page.keyboard.press("ArrowUp")  # 1× to 0.5×
    assert page.locator("#speed").input_value() == "0.5"
    page.locator("#seek").focus()
    page.keyboard.press("Home")  # back to the start: a new stream at half speed
    page.locator("#play-pause").focus()
    page.keyboard.press("Space")
    page.locator('#player-status[data-state="paused"]').wait_for()
    assert page.evaluate("document.activeElement.textContent") == "재생"
    assert page.evaluate("window.vdiPlayer.streams") == 2
    page.keyboard.press("Space")
    page.locator('#player-status[data-state="ended"]').wait_for(timeout=60_000)
    wait_centre(page, (0, 0, 255))
    assert re.fullmatch(r"\d:\d\d:\d\d / \d:\d\d:\d\d", page.locator("#seek").get_attribute("aria-valuetext"))
    assert axe_violations(page) == []


def test_anyone_not_an_administrator_is_refused(player, page):
    recording_id = player.recording.index.id
    sign_in(page, player.base_url, "/desktops", NON_ADMIN)
    for path in (
        "/admin/recordings",
        f"/admin/recordings/{recording_id}",
        f"/admin/recordings/{recording_id}/replay",
    ):
        assert page.request.get(player.base_url + path).status == 403, path
    page.goto(f"{player.base_url}/admin/recordings/{recording_id}")
    assert page.locator(".alert").get_attribute("data-reason") == "forbidden"
    assert audit(player.db, "recording.view") == audit(player.db, "recording.play") == []
