"""A civil servant signs in on the portal and sees their desktop in the browser.

Everything here is real: slapd with the demo directory, libvirtd with a QEMU guest booted from the
demo image, the broker and gateway as separate processes (or stock websockify with our token
plugin), and Debian's Chromium driven by Playwright.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.fixtures.portal import (
    domain_exists,
    open_console,
    session_state,
    sign_in,
    user_in,
    user_without_groups,
    wait_connected_and_painted,
)

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("data_plane", ["gateway", "websockify"])
def test_user_signs_in_and_sees_their_desktop(
    stack_factory, page, demo_users, libvirt_host, artifacts_dir, data_plane
):
    stack = stack_factory(data_plane)
    user = user_in(demo_users, "mois")
    sign_in(page, stack.base_url, user)
    open_console(page, stack.base_url, "mois-office")
    session_id = page.url.rsplit("/", 1)[1].split("?")[0]
    domain = session_state(page, stack.base_url, session_id)["desktop"]["name"]
    assert domain_exists(libvirt_host, domain)
    wait_connected_and_painted(page, libvirt_host, domain)
    page.screenshot(path=str(artifacts_dir / f"e2e-desktop-{data_plane}.png"))
    assert page.locator("#console-status").inner_text() == "연결됨"
    assert page.locator("#desktop-name").inner_text() == domain

    page.click("#logoff")
    page.wait_for_url(f"{stack.base_url}/desktops")
    assert not domain_exists(libvirt_host, domain)


def test_wrong_password_gets_one_generic_answer(stack_factory, page, demo_users):
    stack = stack_factory()
    user = user_in(demo_users, "mois")
    sign_in(page, stack.base_url, user, password="not-the-password")
    alert = page.locator("#login-error:not(:empty)")
    alert.wait_for()
    wrong_password_text = alert.inner_text()
    sign_in(page, stack.base_url, SimpleNamespace(uid="nobody-here"), password="x1")
    alert.wait_for()
    assert alert.inner_text() == wrong_password_text
    assert user.uid not in wrong_password_text
    log = (stack.log_dir / "broker.log").read_text()
    assert "not-the-password" not in log
    assert user.uid in log


def test_user_in_no_entitled_group_sees_no_desktops(stack_factory, page, demo_users):
    stack = stack_factory()
    sign_in(page, stack.base_url, user_without_groups(demo_users))
    page.wait_for_url(f"{stack.base_url}/desktops")
    assert page.locator("li[data-pool]").count() == 0
    assert page.locator("#no-desktops").is_visible()


def test_pool_of_another_ministry_is_forbidden(stack_factory, page, demo_users):
    stack = stack_factory()
    sign_in(page, stack.base_url, user_in(demo_users, "mois"))
    page.wait_for_url(f"{stack.base_url}/desktops")
    status = page.evaluate(
        """async () => {
            const xsrf = document.cookie.split('; ').find(c => c.startsWith('_xsrf=')).slice(6);
            const r = await fetch('/api/v1/pools/moef-office/connect', {method: 'POST', headers: {'X-XSRFToken': xsrf}});
            return [r.status, (await r.json()).error.reason];
        }"""
    )
    assert status[0] == 403


def test_unreachable_hypervisor_is_named_on_the_portal(stack_factory, page, demo_users, libvirt_host):
    from tests.fixtures.common import free_port

    dead = libvirt_host.model_copy(
        update={"name": "dead-host", "uri": f"qemu+tcp://127.0.0.1:{free_port()}/system"}
    )
    stack = stack_factory(host=dead)
    sign_in(page, stack.base_url, user_in(demo_users, "mois"))
    page.wait_for_url(f"{stack.base_url}/desktops")
    page.click("li[data-pool='mois-office'] button.connect")
    page.locator("#desktops-error", has_text="dead-host").wait_for(timeout=30_000)


def test_login_api_rejects_wrong_password_with_401(stack_factory, page, demo_users):
    stack = stack_factory()
    page.goto(f"{stack.base_url}/login")
    status, reason = page.evaluate(
        """async (uid) => {
            const xsrf = document.cookie.split('; ').find(c => c.startsWith('_xsrf=')).slice(6);
            const r = await fetch('/api/v1/login', {method: 'POST',
                headers: {'X-XSRFToken': xsrf, 'Content-Type': 'application/json'},
                body: JSON.stringify({username: uid, password: 'wrong'})});
            return [r.status, (await r.json()).error.reason];
        }""",
        user_in(demo_users, "mois").uid,
    )
    assert (status, reason) == (401, "invalid_credentials")
