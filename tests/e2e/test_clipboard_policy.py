"""The pool's clipboard policy, each way, between noVNC in Chromium and a real desktop's X clipboard.

An operator sets the `mois-editor` pool's clipboard policy through the admin API (PATCH
/api/v1/admin/pools/mois-editor), then a civil servant opens a console (one session per policy):

- desktop → browser: the text is put on the session's X clipboard on the session host, as the user
  (`xclip -i` on the session's display); TigerVNC's Xvnc offers it, noVNC asks for it and the console page's
  clipboard field shows what the gateway let through;
- browser → desktop: the text is typed into the console page's clipboard field and sent; the session host's X
  clipboard (`xclip -o`, as the user) holds what the gateway let through.

A blocked or cut transfer shows the page's notice (broker/web/i18n.py, Korean and English) and leaves one
`console.clipboard` audit line with the size and SHA-256 of the text, never the text. Everything is real:
slapd, the broker and gateway processes, the lab's session hosts with Xvnc, and Debian's Chromium.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shlex
from dataclasses import dataclass

import pytest
from playwright.sync_api import expect

from broker.web.i18n import MESSAGES
from hypervisor.session_scripts import SESSIONS_DIR
from tests.fixtures.accessibility import axe_violations
from tests.fixtures.common import wait_until
from tests.fixtures.portal import open_console, sign_in, user_in
from tests.fixtures.sbc_stack import SBC_ADMIN_GROUP

pytestmark = pytest.mark.e2e

POOL = "mois-editor"
# An X client asking for a selection whose owner (Xvnc, for the browser's text) never answers waits; this
# bounds one look at the desktop's clipboard.
XCLIP_WAIT_S = 5
CUT_BYTES = 14


@dataclass(frozen=True)
class Policy:
    name: str
    settings: dict
    to_desktop: str  # "passes", "blocked" or "truncated"
    to_client: str
    locale: str = "ko-KR"


POLICIES = (
    Policy("both", {"clipboard": "both"}, "passes", "passes"),
    Policy("none", {"clipboard": "none"}, "blocked", "blocked", locale="en-US"),
    Policy("to_desktop", {"clipboard": "to_desktop"}, "passes", "blocked"),
    Policy("to_client", {"clipboard": "to_client"}, "blocked", "passes"),
    # Real noVNC and Xvnc only ever exchange text, so text_only lets it through; the size limit cuts it.
    Policy(
        "cut",
        {"clipboard": "both", "clipboard_max_bytes": CUT_BYTES, "clipboard_text_only": True},
        "truncated",
        "truncated",
        locale="en-US",
    ),
)
DEFAULTS = {"clipboard": "both", "clipboard_max_bytes": 1024 * 1024, "clipboard_text_only": False}


def cut(text: str) -> str:
    """What the gateway lets through of `text` under the cut policy: whole UTF-8 characters within the limit."""
    return text.encode()[:CUT_BYTES].decode("utf-8", "ignore")


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class Operator:
    """An administrator's browser context: the admin API with the portal's session cookie and XSRF header."""

    def __init__(self, browser, base_url: str, admin) -> None:
        self.base_url = base_url
        self.context = browser.new_context(locale="ko-KR")
        page = self.context.new_page()
        sign_in(page, base_url, admin)
        page.wait_for_url(f"{base_url}/desktops")
        self.request = page.request

    def _xsrf(self) -> str:
        return next(c["value"] for c in self.context.cookies() if c["name"] == "_xsrf")

    def set_pool(self, settings: dict) -> None:
        response = self.request.patch(
            f"{self.base_url}/api/v1/admin/pools/{POOL}",
            data=json.dumps(settings),
            headers={"Content-Type": "application/json", "X-XSRFToken": self._xsrf()},
        )
        assert response.status == 200, response.text()
        shown = response.json()
        assert {key: shown[key] for key in settings} == settings

    def clipboard_audit(self, user: str, session_id: str) -> list[dict]:
        response = self.request.get(
            f"{self.base_url}/api/v1/admin/audit", params={"action": "console.clipboard", "user": user}
        )
        assert response.status == 200, response.text()
        return [e for e in response.json()["events"] if e["detail"].get("session") == session_id]


class Desktop:
    """The user's session on its session host: its X clipboard, read and set as the user."""

    def __init__(self, hosts, providers, user, desktop: str) -> None:
        [(self.host, info)] = [
            (name, info)
            for name, provider in providers.items()
            for info in provider.sessions()
            if info.name == desktop
        ]
        assert info.user == user.uid
        self.hosts = hosts
        self.user = user.uid
        self.env = ["env", f"DISPLAY=:{info.display}", f"XAUTHORITY={SESSIONS_DIR}/{desktop}/xauth"]

    def _as_user(self, argv: list[str]) -> list[str]:
        return ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *self.env, *argv]

    def copy(self, text: str) -> None:
        # xclip stays to serve the selection until another client takes it (Xvnc does when the browser
        # sends text) or the session's X server ends; its output must not hold the pipes open.
        xclip = shlex.join(self._as_user(["xclip", "-i", "-selection", "clipboard"]))
        result = self.hosts.run(
            self.host, ["sh", "-c", f'printf %s "$1" | {xclip} >/dev/null 2>&1', "sh", text]
        )
        assert result.returncode == 0, result.stderr

    def clipboard(self) -> str:
        argv = ["timeout", str(XCLIP_WAIT_S), "xclip", "-o", "-selection", "clipboard"]
        result = self.hosts.run(self.host, self._as_user(argv), timeout=XCLIP_WAIT_S + 10)
        return result.stdout if result.returncode == 0 else ""


def notice_text(policy: Policy, key: str) -> str:
    return MESSAGES["en" if policy.locale.startswith("en") else "ko"][f"console.{key}"]


def expect_notice(page, policy: Policy, direction: str, outcome: str) -> None:
    key = "clipboard_truncated" if outcome == "truncated" else f"clipboard_blocked_{direction}"
    expect(page.locator("#console-notice")).to_have_text(notice_text(policy, key), timeout=30_000)


def desktop_to_browser(page, desktop: Desktop, policy: Policy, text: str) -> None:
    desktop.copy(text)
    field = page.locator("#clipboard-text")
    if policy.to_client == "blocked":
        expect_notice(page, policy, "to_client", "blocked")
        assert field.input_value() != text
        assert text not in page.content()
        return
    expected = cut(text) if policy.to_client == "truncated" else text
    expect(field).to_have_value(expected, timeout=30_000)
    if policy.to_client == "truncated":
        expect_notice(page, policy, "to_client", "truncated")


def browser_to_desktop(page, desktop: Desktop, policy: Policy, text: str) -> None:
    page.locator("#clipboard summary").click()
    page.locator("#clipboard-text").fill(text)
    page.locator("#clipboard-send").click()
    if policy.to_desktop == "blocked":
        # Xvnc takes the X selection when the browser announces text and asks for it when an X client
        # (xclip here) wants it; the gateway drops the browser's answer, so the X client gets nothing. Until
        # the announcement has arrived, xclip still reads what the desktop itself copied before.
        notice = notice_text(policy, "clipboard_blocked_to_desktop")
        seen = []

        def stopped() -> bool:
            seen.append(desktop.clipboard())
            return page.locator("#console-notice").inner_text() == notice

        wait_until(stopped, 60, f"{policy.name}: the notice that the text was not sent to the desktop")
        assert not any(text in clipboard for clipboard in seen), seen
        return
    expected = cut(text) if policy.to_desktop == "truncated" else text
    seen = [""]

    def arrived() -> bool:
        seen[0] = desktop.clipboard()
        return seen[0] == expected

    try:
        wait_until(arrived, 30, f"{expected!r} on the desktop's clipboard")
    except pytest.fail.Exception:
        pytest.fail(f"{policy.name}: the desktop's clipboard holds {seen[0]!r}, not {expected!r}")
    if policy.to_desktop == "truncated":
        expect_notice(page, policy, "to_desktop", "truncated")


def check_audit(operator: Operator, user, session_id: str, policy: Policy, texts: dict[str, str]) -> None:
    stopped = {
        d: o for d, o in (("to_desktop", policy.to_desktop), ("to_client", policy.to_client)) if o != "passes"
    }

    # One line per message stopped: Xvnc may ask the browser for its text more than once for one paste.
    def lines() -> list[dict]:
        found = operator.clipboard_audit(user.uid, session_id)
        return found if {e["detail"]["direction"] for e in found} >= set(stopped) else []

    if stopped:
        events = wait_until(lines, 30, f"console.clipboard audit lines for {', '.join(stopped)}")
    else:
        # Nothing stopped, nothing audited (a line is written as its transfer is stopped, long since).
        events = operator.clipboard_audit(user.uid, session_id)
    assert {e["detail"]["direction"] for e in events} == set(stopped), events
    for event in events:
        direction = event["detail"]["direction"]
        text = texts[direction]
        assert event["actor"] == user.uid
        assert event["result"] == stopped[direction]
        assert event["detail"]["reason"] == ("policy" if stopped[direction] == "blocked" else "too_large")
        assert event["detail"]["size"] == len(text.encode())
        assert event["detail"]["sha256"] == digest(text)
        # Never the content, not even the part that passed.
        assert text not in json.dumps(event, ensure_ascii=False)
        assert cut(text) not in json.dumps(event, ensure_ascii=False)


def test_each_clipboard_policy_each_way_between_novnc_and_the_desktop(
    sbc_stack, browser, demo_users, lab_session_hosts, sbc_providers
):
    user = user_in(demo_users, "mois")
    admin = next(u for u in demo_users if u.groups == (SBC_ADMIN_GROUP,))
    operator = Operator(browser, sbc_stack.base_url, admin)
    try:
        for policy in POLICIES:
            operator.set_pool({**DEFAULTS, **policy.settings})
            # The first console is also checked with axe-core (injected, hence bypass_csp), clipboard field open.
            context = browser.new_context(
                locale=policy.locale,
                viewport={"width": 1100, "height": 800},
                bypass_csp=policy is POLICIES[0],
            )
            try:
                page = context.new_page()
                sign_in(page, sbc_stack.base_url, user)
                open_console(page, sbc_stack.base_url, POOL)
                page.locator("#console-status[data-state=connected]").wait_for(timeout=60_000)
                session_id = page.locator("#console").get_attribute("data-session-id")
                name = page.locator("#desktop-name").inner_text()
                desktop = Desktop(lab_session_hosts, sbc_providers, user, name)
                tag = secrets.token_hex(3)
                # Hangul and Latin, longer than the cut policy's limit (3 bytes a syllable).
                texts = {
                    "to_client": f"데스크톱 복사 {policy.name} {tag}",
                    "to_desktop": f"브라우저 붙여넣기 {policy.name} {tag}",
                }
                # Desktop to browser first: once its outcome is seen, noVNC has the Extended Clipboard
                # capabilities of Xvnc, so the browser's text goes as UTF-8.
                desktop_to_browser(page, desktop, policy, texts["to_client"])
                browser_to_desktop(page, desktop, policy, texts["to_desktop"])
                check_audit(operator, user, session_id, policy, texts)
                if policy is POLICIES[0]:
                    assert axe_violations(page) == []
                if policy.to_desktop == policy.to_client == "passes":
                    assert page.locator("#console-notice").is_hidden()
                page.click("#logoff")
                page.wait_for_url(f"{sbc_stack.base_url}/desktops")
                # The session's X server is gone, and with it the xclip that served the desktop's text.
                assert name not in sbc_providers[desktop.host].list_desktops()
            finally:
                context.close()
    finally:
        operator.context.close()
