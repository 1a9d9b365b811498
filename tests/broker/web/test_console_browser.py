"""The portal in headless Chromium: sign in, the desktops page's error alert, and the console
page reaching "연결됨" through a console token and the real gateway."""

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from pydantic import SecretStr
from sqlalchemy import update
from tornado.httpserver import HTTPServer

from broker.db import Database
from broker.db.models import Desktop
from broker.db.vnc_passwords import VncPasswordBox
from gateway.app import make_app as make_gateway_app
from tests.fixtures.broker import (
    COOKIE_SECRET,
    PASSWORD,
    TEST_IMAGE,
    LoopThread,
    RfbPeer,
    UnreachableProvider,
    make_broker_config,
    seed_session,
)
from tests.fixtures.common import VNC_PASSWORD_KEY, free_port
from vdi.config import Config

pytestmark = pytest.mark.e2e


@dataclass
class ConsoleStack:
    base_url: str
    config: Config
    db: Database


class GatewayThread:
    """The real gateway app on its own loop, allowing the broker's origin."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.db = Database(config.database)
        self.loop = LoopThread("gateway-under-test")
        self.loop.call(self._start())

    async def _start(self) -> None:
        self.app = make_gateway_app(self.config, self.db)
        self.server = HTTPServer(self.app)
        self.server.listen(self.config.gateway.port, "127.0.0.1")

    async def _stop(self) -> None:
        self.server.stop()
        await self.app.tunnels.close_all("test finished", timeout_s=5.0)
        await self.server.close_all_connections()

    def stop(self) -> None:
        self.loop.call(self._stop())
        self.loop.close()
        self.db.close()


@pytest.fixture
def console_stack(request, tmp_path, broker_server, fake_authenticator) -> Iterator[ConsoleStack]:
    """Broker and gateway; a test may give its pool's settings as the fixture's parameter."""
    gateway_port = free_port()
    pool = {"name": "mois-office", "display_name": "행정안전부 업무용 데스크톱", "groups": ["mois"]}
    config = make_broker_config(
        tmp_path / "console.db",
        broker={"cookie_secret": COOKIE_SECRET, "gateway_url": f"ws://127.0.0.1:{gateway_port}/ws"},
        pools=[pool | getattr(request, "param", {})],
    )
    drivers = {host.name: UnreachableProvider(host) for host in config.hosts}
    base_url = broker_server(
        config, authenticator=fake_authenticator, providers=drivers, image_resolver=lambda pool: TEST_IMAGE
    )
    gateway_config = config.model_copy(deep=True)
    gateway_config.gateway.port = gateway_port
    gateway_config.gateway.allowed_origins = [base_url]
    gateway_config.gateway.vnc_password_key = SecretStr(VNC_PASSWORD_KEY)
    gateway = GatewayThread(gateway_config)
    database = Database(config.database)
    yield ConsoleStack(base_url, config, database)
    database.close()
    gateway.stop()


def sign_in(page, base_url: str, path: str) -> None:
    page.goto(base_url + path)
    page.get_by_label("사용자 ID").fill("kimmj")
    page.get_by_label("비밀번호").fill(PASSWORD)
    page.get_by_role("button", name="로그인").click()


def test_console_connects_and_says_so(console_stack, page, rfb_peer):
    session_id, _ = seed_session(console_stack.db, "kimmj", "mois-office", vnc_port=rfb_peer.port)
    problems = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    sign_in(page, console_stack.base_url, f"/console/{session_id}")
    page.wait_for_url(f"**/console/{session_id}")
    page.wait_for_function("() => window.vdiConsoleState === 'connected'", timeout=20_000)

    status = page.locator("#console-status")
    assert status.text_content() == "연결됨"
    assert status.get_attribute("data-state") == "connected"
    assert status.get_attribute("aria-live") == "polite"
    assert page.locator("#screen canvas").count() == 1
    assert rfb_peer.handshakes == 1
    assert problems == []

    page.get_by_role("button", name="연결 끊기").click()
    page.wait_for_url("**/desktops")


def test_log_off_failure_is_announced_and_the_console_can_reconnect(console_stack, page, rfb_peer):
    session_id, _ = seed_session(console_stack.db, "kimmj", "mois-office", vnc_port=rfb_peer.port)
    sign_in(page, console_stack.base_url, f"/console/{session_id}")
    page.locator('#console-status[data-state="connected"]').wait_for()
    page.get_by_role("button", name="로그오프").click()
    alert = page.locator("#console-error")
    alert.wait_for(state="visible")
    assert "host local" in alert.text_content()
    page.get_by_role("button", name="다시 연결").click()
    page.locator('#console-status[data-state="connected"]').wait_for()
    assert rfb_peer.handshakes == 2


def test_connect_error_is_announced_naming_the_host(console_stack, page):
    sign_in(page, console_stack.base_url, "/login")
    page.wait_for_url("**/desktops")
    page.get_by_role("button", name="행정안전부 업무용 데스크톱 연결").click()
    alert = page.locator("#desktops-error")
    alert.wait_for(state="visible")
    assert alert.get_attribute("role") == "alert"
    assert "host local" in alert.text_content()
    assert page.get_by_role("button", name="행정안전부 업무용 데스크톱 연결").is_enabled()


def test_keyboard_user_can_skip_to_the_main_content(console_stack, page):
    sign_in(page, console_stack.base_url, "/login")
    page.wait_for_url("**/desktops")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.className") == "skip-link"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


@pytest.mark.parametrize("console_stack", [{"clipboard": "to_desktop"}], indirect=True)
def test_a_desktop_clipboard_the_policy_keeps_is_announced_and_noVNC_carries_on(console_stack, page):
    """Credential injection in Chromium: noVNC gets security None from the gateway, which logs in to
    the desktop; the desktop's clipboard stays there (pool clipboard = to_desktop) and the page says so."""
    peer = RfbPeer(password="pw-12345", cut_text=b"internal memo")
    try:
        session_id, desktop_id = seed_session(console_stack.db, "kimmj", "mois-office", vnc_port=peer.port)
        with console_stack.db.transaction() as s:
            domain = s.get(Desktop, desktop_id).domain_name
            sealed = VncPasswordBox(VNC_PASSWORD_KEY).seal(domain, "pw-12345")
            s.execute(update(Desktop).where(Desktop.id == desktop_id).values(vnc_password_sealed=sealed))
        sign_in(page, console_stack.base_url, f"/console/{session_id}")
        page.wait_for_function("() => window.vdiConsoleState === 'connected'", timeout=20_000)
        notice = page.locator("#console-notice")
        notice.wait_for(state="visible", timeout=10_000)
        expected = "정책(또는 크기 제한)에 따라 데스크톱의 클립보드 내용을 이 PC로 보내지 않았습니다."
        assert notice.text_content() == expected
        assert page.evaluate("() => window.vdiConsoleState") == "connected"
        assert peer.handshakes == 1
    finally:
        peer.close()
