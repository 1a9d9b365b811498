"""Disconnect is not logoff: a user who closes the browser comes back to the same desktop from another one.

Closing the browser (here: its whole context, with its cookies) only ends the console tunnel; the desktop
session stays active. Signing in again in a second browser context and connecting continues that session
on the same desktop: same domain, the same screen, and no second desktop is started.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from broker.db.models import AuditEvent, Desktop
from hypervisor.libvirt_provider import LibvirtProvider
from tests.fixtures.portal import (
    open_console,
    session_state,
    sign_in,
    user_in,
    wait_connected_and_painted,
)

pytestmark = pytest.mark.e2e

POOL = "mois-office"


@pytest.fixture
def stack(stack_factory, libvirt_host) -> Iterator:
    stack = stack_factory()
    yield stack
    # Whatever the test left (a failure before logoff) is removed here, not by the next run.
    driver = LibvirtProvider(libvirt_host)
    try:
        for desktop in stack_desktops(stack):
            driver.destroy_desktop(desktop)
    finally:
        driver.close()


def stack_query(stack, query) -> list:
    engine = create_engine(f"sqlite:///{stack.config_path.parent / 'vdi.db'}")
    try:
        with Session(engine) as session:
            return list(session.scalars(query).all())
    finally:
        engine.dispose()


def stack_desktops(stack, user: str | None = None) -> list[str]:
    query = select(Desktop.domain_name).where(Desktop.state != "deleted")
    if user is not None:
        query = query.where(Desktop.assigned_user == user)
    return stack_query(stack, query)


def new_page(browser):
    context = browser.new_context(locale="ko-KR", viewport={"width": 1280, "height": 900})
    return context, context.new_page()


def test_closing_the_browser_disconnects_and_another_browser_returns_to_the_same_desktop(
    stack, browser, demo_users, libvirt_host, artifacts_dir
):
    user = user_in(demo_users, "mois")
    office, page = new_page(browser)
    sign_in(page, stack.base_url, user)
    open_console(page, stack.base_url, POOL)
    session_id = page.url.rsplit("/", 1)[1].split("?")[0]
    domain = session_state(page, stack.base_url, session_id)["desktop"]["name"]
    wait_connected_and_painted(page, libvirt_host, domain)
    office.close()  # the browser goes away without logging off: a disconnect

    home, page = new_page(browser)
    try:
        sign_in(page, stack.base_url, user)
        page.wait_for_url(f"{stack.base_url}/desktops")
        card = page.locator(f"li[data-pool='{POOL}'] .state")
        assert card.get_attribute("data-state") == "running"
        open_console(page, stack.base_url, POOL)

        assert page.url.rsplit("/", 1)[1].split("?")[0] == session_id
        wait_connected_and_painted(page, libvirt_host, domain)
        assert page.locator("#desktop-name").inner_text() == domain
        page.screenshot(path=str(artifacts_dir / "e2e-reconnect-second-browser.png"))
        assert stack_desktops(stack, user.uid) == [domain]
        actions = stack_query(
            stack,
            select(AuditEvent.action)
            .where(AuditEvent.actor == user.uid, AuditEvent.action.in_(("connect", "reconnect", "logoff")))
            .order_by(AuditEvent.id),
        )
        assert actions == ["connect", "reconnect"]

        page.click("#logoff")
        page.wait_for_url(f"{stack.base_url}/desktops")
        assert stack_desktops(stack, user.uid) == []
    finally:
        home.close()
