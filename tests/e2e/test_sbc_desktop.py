"""A civil servant opens the SBC desktop in the browser: XFCE's panel, Hangul typed into the editor, saved on
the session host; the session is still there from a second browser; a published application shows alone; the
session follows the browser window's size.

Everything is real: slapd with the demo directory, the broker and the gateway as processes, the lab's session
hosts sh1 and sh2 (sshd, Xvnc as the user's own account, xfwm4, xfce4-panel, IBus with ibus-hangul, mousepad),
the gateway's SSH channel to the session's loopback display with the session's VNC password injected, and
Debian's Chromium driving noVNC with the keyboard.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from hypervisor.session_host import SessionHostProvider
from tests.fixtures.common import ROOT, free_port, wait_until
from tests.fixtures.e2e import Stack, vdi_process
from tests.fixtures.portal import open_console, sign_in, user_in
from tests.fixtures.session_hosts import session_host_settings
from vdi.lab.session_hosts import XSESSION

pytestmark = pytest.mark.e2e

HOSTS = ("sh1", "sh2")
MEMO = f"memo-{secrets.token_hex(3)}.txt"
# The panel's colour in ansible/roles/smartwork_session_host/files/xfce4-panel.xml (0.20, 0.33, 0.55).
PANEL_RGB = (51, 84, 140)

# Function forms: the console page's Content-Security-Policy forbids evaluating strings.
# True when the canvas's top strip is the panel's colour across most of its width.
PANEL_SHOWN = """
([r, g, b]) => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || canvas.width < 100 || canvas.height < 100) return false;
  const row = canvas.getContext('2d').getImageData(0, 14, canvas.width, 1).data;
  let panel = 0, samples = 0;
  for (let i = 0; i < row.length; i += 4 * 7) {
    samples++;
    if (Math.abs(row[i] - r) < 24 && Math.abs(row[i + 1] - g) < 24 && Math.abs(row[i + 2] - b) < 24) panel++;
  }
  return panel / samples > 0.6;
}
"""
# The middle of the largest white area below the top strip (the editor's text), in page coordinates.
WHITE_AREA = """
() => {
  const canvas = document.querySelector('#screen canvas');
  if (!canvas || !canvas.width) return null;
  const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let x0 = Infinity, y0 = Infinity, x1 = -1, y1 = -1, count = 0;
  for (let y = 40; y < canvas.height; y += 4) {
    for (let x = 0; x < canvas.width; x += 4) {
      const i = 4 * (y * canvas.width + x);
      if (data[i] === 255 && data[i + 1] === 255 && data[i + 2] === 255) {
        count++; x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y);
      }
    }
  }
  if (count < 500) return null;
  const box = canvas.getBoundingClientRect();
  return {x: box.left + ((x0 + x1) / 2) * box.width / canvas.width,
          y: box.top + ((y0 + y1) / 2) * box.height / canvas.height};
}
"""
FRAMEBUFFER = """
() => {
  const canvas = document.querySelector('#screen canvas');
  const screen = document.getElementById('screen');
  return canvas ? [canvas.width, canvas.height, screen.clientWidth, screen.clientHeight] : null;
}
"""


def sbc_config(tmp_path, ldap, hosts, broker_port: int, gateway_port: int) -> str:
    from tests.fixtures.common import VNC_PASSWORD_KEY

    host_tables = "".join(
        f'[[hosts]]\nname = "{name}"\nprovider = "session-host"\nuri = "{hosts.uri(name)}"\n'
        f'max_desktops = 4\nlabels = {{ provider = "session-host" }}\n\n'
        for name in HOSTS
    )
    return f"""
[database]
url = "sqlite:///{tmp_path}/vdi.db"

[broker]
port = {broker_port}
cookie_secret = "{"e2e-secret-" + "0" * 32}"
gateway_url = "ws://127.0.0.1:{gateway_port}/ws"
vnc_password_key = "{VNC_PASSWORD_KEY}"

[gateway]
port = {gateway_port}
allowed_origins = ["http://127.0.0.1:{broker_port}"]
vnc_password_key = "{VNC_PASSWORD_KEY}"
ssh_key_file = "{hosts.client_key}"
ssh_known_hosts = "{hosts.known_hosts}"

[ldap]
url = "{ldap.url}"
user_base = "{ldap.user_base}"
group_base = "{ldap.group_base}"

{host_tables}
[[pools]]
name = "mois-sbc"
display_name = "행정안전부 SBC 데스크톱"
groups = ["mois"]
kind = "session"
required_labels = {{ provider = "session-host" }}
session_command = ["{XSESSION}", "mousepad", "{MEMO}"]
memory_limit_mib = 1024

[[pools]]
name = "mois-editor"
display_name = "문서 편집기"
groups = ["mois"]
kind = "app"
required_labels = {{ provider = "session-host" }}
app_command = ["mousepad"]
"""


@pytest.fixture
def providers(lab_session_hosts) -> Iterator[dict[str, SessionHostProvider]]:
    made = {name: SessionHostProvider(session_host_settings(lab_session_hosts, name)) for name in HOSTS}
    yield made
    for provider in made.values():
        for session in provider.list_desktops():  # whatever a failed test left
            provider.destroy_desktop(session)
        provider.close()


@pytest.fixture
def sbc_stack(tmp_path, slapd, ldap_settings, lab_session_hosts, providers) -> Iterator[Stack]:
    broker_port, gateway_port = free_port(), free_port()
    config_path = tmp_path / "vdi.toml"
    config_path.write_text(sbc_config(tmp_path, ldap_settings, lab_session_hosts, broker_port, gateway_port))
    subprocess.run(
        [sys.executable, "-m", "vdi.cli", "--config", str(config_path), "db", "upgrade"], check=True, cwd=ROOT
    )
    with contextlib.ExitStack() as processes:
        for command, port in (("gateway", gateway_port), ("broker", broker_port)):
            processes.enter_context(
                vdi_process(
                    config_path, [command], f"http://127.0.0.1:{port}/healthz", tmp_path / f"{command}.log"
                )
            )
        yield Stack(
            config_path, f"http://127.0.0.1:{broker_port}", f"ws://127.0.0.1:{gateway_port}/ws", tmp_path
        )


def desktop_name(page) -> str:
    return page.locator("#desktop-name").inner_text()


def host_of(providers, desktop: str) -> str:
    [host] = [name for name, provider in providers.items() if desktop in provider.list_desktops()]
    return host


def session_programs(hosts, host: str, user: str) -> set[str]:
    listed = hosts.run(host, ["ps", "-o", "comm=", "-u", user]).stdout
    return {line.strip() for line in listed.splitlines() if line.strip()}


def file_on_host(hosts, host: str, path: str) -> str:
    result = hosts.run(host, ["cat", path])
    return result.stdout if result.returncode == 0 else ""


def connected(page) -> None:
    page.locator("#console-status[data-state=connected]").wait_for(timeout=60_000)


def click_into_editor(page) -> None:
    # Wait for the editor's white text area, then click into it so it has the keyboard for sure.
    point = page.wait_for_function(WHITE_AREA, timeout=30_000).json_value()
    page.mouse.click(point["x"], point["y"])


def type_hangul_and_save(page, keys: str) -> None:
    page.keyboard.press("Shift+Space")  # ibus-hangul's switch key: Latin → Hangul
    page.keyboard.type(keys, delay=40)  # 2-beolsik: gksrmf → 한글
    page.keyboard.press("Space")  # commits the last syllable
    page.keyboard.press("Shift+Space")  # back to Latin, so Ctrl+S is a shortcut, not a jamo
    page.keyboard.press("Control+s")


def test_sbc_desktop_with_panel_and_hangul_survives_a_second_browser(
    sbc_stack, page, browser, demo_users, lab_session_hosts, providers, artifacts_dir
):
    user = user_in(demo_users, "mois")
    memo = f"/home/{user.uid}/{MEMO}"
    sign_in(page, sbc_stack.base_url, user)
    open_console(page, sbc_stack.base_url, "mois-sbc")
    connected(page)
    desktop = desktop_name(page)
    host = host_of(providers, desktop)
    page.wait_for_function(PANEL_SHOWN, arg=list(PANEL_RGB), timeout=60_000)
    assert {"xfce4-panel", "xfwm4", "ibus-daemon", "mousepad"} <= session_programs(
        lab_session_hosts, host, user.uid
    )

    click_into_editor(page)
    type_hangul_and_save(page, "gksrmf")
    wait_until(lambda: file_on_host(lab_session_hosts, host, memo).strip() == "한글", 30, f"한글 in {memo}")
    page.screenshot(path=str(artifacts_dir / "e2e-sbc-desktop-hangul.png"))

    # A second browser: the same session, its editor still holding the text (saving again writes both words).
    other = browser.new_context(locale="ko-KR", viewport={"width": 1100, "height": 800})
    try:
        second = other.new_page()
        sign_in(second, sbc_stack.base_url, user)
        open_console(second, sbc_stack.base_url, "mois-sbc")
        connected(second)
        assert desktop_name(second) == desktop
        second.wait_for_function(PANEL_SHOWN, arg=list(PANEL_RGB), timeout=60_000)
        click_into_editor(second)
        second.keyboard.press("Control+End")
        type_hangul_and_save(second, "dkswjs")  # 안전
        wait_until(
            lambda: file_on_host(lab_session_hosts, host, memo).split() == ["한글", "안전"],
            30,
            f"한글 안전 in {memo}",
        )
        assert host_of(providers, desktop) == host
        second.click("#logoff")
        second.wait_for_url(f"{sbc_stack.base_url}/desktops")
    finally:
        other.close()
        lab_session_hosts.run(host, ["rm", "-f", memo])
    assert desktop not in providers[host].list_desktops()


def test_a_published_application_shows_alone(sbc_stack, page, demo_users, lab_session_hosts, providers):
    user = user_in(demo_users, "mois")
    sign_in(page, sbc_stack.base_url, user)
    open_console(page, sbc_stack.base_url, "mois-editor")
    connected(page)
    desktop = desktop_name(page)
    host = host_of(providers, desktop)
    click_into_editor(page)  # the editor is drawn
    programs = session_programs(lab_session_hosts, host, user.uid)
    assert "mousepad" in programs
    assert not programs & {"xfce4-panel", "xfwm4", "openbox", "xterm"}, programs
    assert not page.evaluate(PANEL_SHOWN, list(PANEL_RGB))
    page.click("#logoff")
    page.wait_for_url(f"{sbc_stack.base_url}/desktops")
    assert desktop not in providers[host].list_desktops()


def test_the_session_follows_the_browser_window_size(sbc_stack, page, demo_users, providers):
    sign_in(page, sbc_stack.base_url, user_in(demo_users, "mois"))
    open_console(page, sbc_stack.base_url, "mois-editor")
    connected(page)

    def follows() -> bool:
        sizes = page.evaluate(FRAMEBUFFER)
        return bool(sizes) and sizes[0] == sizes[2] and sizes[1] == sizes[3]

    wait_until(follows, 30, "the framebuffer taking the screen's size")
    before = page.evaluate(FRAMEBUFFER)
    page.set_viewport_size({"width": 900, "height": 700})
    wait_until(
        lambda: follows() and page.evaluate(FRAMEBUFFER)[0] != before[0], 30, "the framebuffer to shrink"
    )
    after = page.evaluate(FRAMEBUFFER)
    assert after[0] < before[0] and after[1] < before[1], (before, after)
    page.click("#logoff")
    page.wait_for_url(f"{sbc_stack.base_url}/desktops")
